"""Install PyTorch for `make setup`: the CPU-only build unless told otherwise (standard library only: it runs
in the fresh virtual environment before anything else is installed).

    python scripts/install_torch.py <torch spec> <CPU wheel index URL or ''> [--timeout S] [--dry-run]

PyTorch's own way to ask for the CPU build is its wheel index, https://download.pytorch.org/whl/cpu. pip is
given it as an *extra* index beside the one it is configured with: both offer the requested version, and
pip takes the CPU build because its local version label (`2.13.0+cpu`) ranks above the plain `2.13.0`,
which on Linux x86_64 PyPI is the multi-GB CUDA build. The index is first asked for its torch page with a
short timeout: a machine that reaches only a package registry or a mirror would otherwise wait for pip's
retries on every run. When it cannot be reached, this says so and pip installs the spec from its
configured index alone (a CPU build where that index has one, as a mirror with a `+cpu` wheel does; on
plain PyPI for Linux, the CUDA build). An empty index URL skips it: the index's default build.
At the end it prints which build was installed (or, with --dry-run, which file pip would install).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path


def reachable(index: str, timeout: float) -> str | None:
    """None when the index answers for torch within `timeout` seconds, else why not."""
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/torch/", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except Exception as err:  # noqa: BLE001 - any failure (DNS, refused, timeout, TLS) means: not reachable
        return str(getattr(err, "reason", None) or err) or type(err).__name__


def pip_command(spec: str, index: str | None, report: Path | None) -> list[str]:
    command = [sys.executable, "-m", "pip", "install", "--quiet", spec]
    if index:
        command += ["--extra-index-url", index]
    if report is not None:
        command += ["--dry-run", "--ignore-installed", "--no-deps", "--report", str(report)]
    return command


def installed_build() -> str:
    probe = "import torch; print(torch.__version__, torch.version.cuda or '')"
    version, _, cuda = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                      check=True).stdout.strip().partition(" ")
    return f"torch {version}: " + (f"a CUDA {cuda} build" if cuda else "a CPU-only build")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("index")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the index")
    parser.add_argument("--dry-run", action="store_true", help="resolve only; print the file pip would install")
    args = parser.parse_args(argv)
    index = args.index or None
    if index is not None:
        problem = reachable(index, args.timeout)
        if problem is None:
            print(f"install_torch: {args.spec} with {index} (CPU builds) beside pip's index", flush=True)
        else:
            print(f"install_torch: {index} cannot be reached ({problem}); installing {args.spec} from pip's "
                  "configured index alone (CPU-only where that index has a CPU build)", flush=True)
            index = None
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json" if args.dry_run else None
        code = subprocess.run(pip_command(args.spec, index, report)).returncode
        if code != 0:
            return code
        if report is not None:
            for item in json.loads(report.read_text())["install"]:
                print(f"install_torch: would install {item['metadata']['name']} {item['metadata']['version']} "
                      f"from {item['download_info']['url']}", flush=True)
            return 0
    print(f"install_torch: {installed_build()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
