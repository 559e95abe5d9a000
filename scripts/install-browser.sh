#!/usr/bin/env bash
# Installs Debian's chromium for the browser test (tests/e2e/). The Python package playwright drives it
# (installed by `make setup` from the dev extra); we never run `playwright install`, which downloads
# browsers from elsewhere. Needs root or sudo on Debian/Ubuntu; a no-op when chromium is present.
set -euo pipefail
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    echo "chromium present: $("$CHROMIUM" --version 2>/dev/null | tail -1)"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: $CHROMIUM is missing and apt-get is not available; install chromium by hand" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "error: installing chromium needs root (or sudo)" >&2; exit 1; }
    SUDO="sudo"
fi
$SUDO apt-get update
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
[ -x "$CHROMIUM" ] || { echo "error: apt-get installed chromium but $CHROMIUM is missing" >&2; exit 1; }
"$CHROMIUM" --version 2>/dev/null | tail -1
