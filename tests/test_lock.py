"""The committed lock: what `make venv` installs is exactly requirements.lock, and it pins every package."""

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) \\$")


def _pins() -> dict[str, str]:
    from scripts.compare_lock import normalise

    return {normalise(m.group(1)): m.group(2) for m in map(PIN.match, LOCK.read_text().splitlines()) if m}


def test_every_pin_has_hashes():
    lines = LOCK.read_text().splitlines()
    pinned = [i for i, line in enumerate(lines) if PIN.match(line)]
    assert len(pinned) > 50
    for i in pinned:
        assert lines[i + 1].strip().startswith("--hash=sha256:"), f"{lines[i]} has no hash"
    assert "torch==2.13.0+cpu" in LOCK.read_text()  # the CPU build (a plain torch is the CUDA one)


@pytest.mark.skipif(not (ROOT / ".venv").is_dir() or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the environment `make venv` built from the lock (.venv)")
def test_the_environment_is_the_lock():
    """Every installed package is in the lock at its locked version: a dependency added without `make lock`, or an
    environment not installed from the lock, fails here."""
    from scripts.compare_lock import normalise

    pins = _pins()
    for dist in importlib.metadata.distributions():
        name = normalise(dist.metadata["Name"])
        if name == "transprune-pilot":
            continue
        assert name in pins, f"{name} is installed but not in requirements.lock: run `make lock`"
        assert pins[name] == dist.version, f"{name} {dist.version} installed, {pins[name]} locked"


def test_compare_lock_names_what_differs(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("pytest==0.0.1 \\\n    --hash=sha256:00\nnot-installed-anywhere==1.0 \\\n")
    out = subprocess.run([sys.executable, "scripts/compare_lock.py", str(lock)], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == f"pytest: locked 0.0.1, newest {importlib.metadata.version('pytest')}"
