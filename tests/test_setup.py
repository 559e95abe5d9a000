"""The environment's promises: `make setup` installs PyTorch's CPU build, `make ui` serves on 127.0.0.1 only,
`make audit` never passes off an audit it could not do as clean, and pyproject.toml excludes versions with
known CVEs.

`make setup`: the Makefile hands scripts/install_torch.py PyTorch's CPU wheel index, with which pip prefers the
CPU build to the registry's default build of the same version; a machine that cannot reach that index is told
so and gets the registry's build, after a short timeout instead of pip's retries. Checked with real pip
resolving (--dry-run) from two package indexes served on 127.0.0.1 that stand for PyPI (torch 2.13.0, the
default build) and PyTorch's CPU index (torch 2.13.0+cpu), holding tiny wheels of those names and versions;
pip's own configuration (local wheels, mirrors) is switched off for it."""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "scripts" / "install_torch.py"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _wheel(folder: Path, version: str) -> str:
    """A minimal valid wheel of `torch` at `version` (what pip reads to resolve; nothing is installed)."""
    name = f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    files = {"torch/__init__.py": "",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return name


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def package_indexes(folder: Path):
    """Serve <url>/pypi/ (torch 2.13.0) and <url>/cpu/ (torch 2.13.0+cpu), PEP 503 simple indexes."""
    for index, version in (("pypi", "2.13.0"), ("cpu", "2.13.0+cpu")):
        name = _wheel(folder / "files", version)
        page = folder / index / "torch" / "index.html"
        page.parent.mkdir(parents=True)
        page.write_text(f'<html><body><a href="../../files/{quote(name)}">{name}</a></body></html>')
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _install(registry: str, cpu_index: str, timeout: float) -> subprocess.CompletedProcess:
    """The installer, resolving only, on a machine whose pip knows `registry` alone (as a fresh machine's knows PyPI)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=f"{registry}/", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1")
    return subprocess.run([sys.executable, str(INSTALLER), "torch==2.13.0", cpu_index, "--timeout", str(timeout),
                           "--dry-run"], capture_output=True, text=True, env=env, timeout=120)


def test_make_setup_installs_torch_through_the_installer_with_pytorchs_cpu_index(tmp_path):
    plan = subprocess.run(["make", "-n", "setup", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout
    assert f'scripts/install_torch.py "torch==2.13.0" "{PYTORCH_CPU_INDEX}" --timeout 10' in plan
    assert plan.index("install_torch.py") < plan.index('pip install -q -e ".[dev]"')  # torch before the project


def test_with_the_cpu_index_reachable_pip_takes_the_cpu_build(tmp_path):
    with package_indexes(tmp_path / "www") as url:
        done = _install(f"{url}/pypi", f"{url}/cpu", timeout=10)
    assert done.returncode == 0, done.stderr
    assert f"torch==2.13.0 with {url}/cpu (CPU builds) beside pip's index" in done.stdout
    assert f"would install torch 2.13.0+cpu from {url}/files/torch-2.13.0%2Bcpu-py3-none-any.whl" in done.stdout


def test_without_the_cpu_index_setup_says_so_and_installs_from_the_registry(tmp_path):
    with package_indexes(tmp_path / "www") as url, socket.socket() as black_hole:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)  # connections are accepted by the kernel and never answered: a silent firewall
        done = _install(f"{url}/pypi", f"http://127.0.0.1:{black_hole.getsockname()[1]}/cpu", timeout=2)
    assert done.returncode == 0, done.stderr
    assert "cannot be reached (timed out); installing torch==2.13.0 from pip's configured index alone" in done.stdout
    assert f"would install torch 2.13.0 from {url}/files/torch-2.13.0-py3-none-any.whl" in done.stdout


def test_an_unreachable_index_costs_the_timeout_not_pips_retries():
    spec = importlib.util.spec_from_file_location("install_torch", INSTALLER)
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    with socket.socket() as black_hole, socket.socket() as closed:
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(8)
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused at once
        for url, why in ((f"http://127.0.0.1:{black_hole.getsockname()[1]}", "timed out"),
                         (f"http://127.0.0.1:{closed.getsockname()[1]}", "refused")):
            started = time.monotonic()
            assert why in installer.reachable(url, timeout=1.5)
            assert time.monotonic() - started < 5


def test_make_ui_serves_on_127_0_0_1_only(tmp_path):
    plan = subprocess.run(["make", "-n", "ui", f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    (command,) = [line for line in plan.splitlines() if " ui " in line or line.endswith(" ui")]
    assert "--host 127.0.0.1" in command and "0.0.0.0" not in (ROOT / "Makefile").read_text()


def test_audit_says_it_was_not_done_when_the_database_cannot_be_reached(tmp_path):
    """pip-audit for real, on this environment, through a proxy that refuses every connection."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    dead = f"http://127.0.0.1:{_closed_port()}"
    env.update(HTTPS_PROXY=dead, HTTP_PROXY=dead, https_proxy=dead, http_proxy=dead,
               XDG_CACHE_HOME=str(tmp_path))  # no cached answers from an earlier audit
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "audit.py")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 3 and done.stdout.startswith(("AUDIT NOT DONE", "AUDIT FAILED")), done.stdout[-2000:]
    assert "audited" not in done.stdout  # never a count that reads like a clean result


def test_versions_with_known_cves_are_excluded():
    pins = {r.name: r.specifier for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())
                                             ["project"]["dependencies"])}
    for name, vulnerable, fixed in (("torch", "2.5.1", "2.6.0"), ("pillow", "10.2.0", "10.3.0"),
                                    ("scikit-learn", "1.4.2", "1.5.0")):
        assert vulnerable not in pins[name] and fixed in pins[name], name


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: nothing listens there
