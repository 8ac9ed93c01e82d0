"""Print the installed packages whose version differs from requirements.lock (``make test-latest``)."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: "typing_extensions" is "typing-extensions"


def main(lock: str = "requirements.lock") -> int:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", Path(lock).read_text(), re.MULTILINE)
    locked = {normalise(name): version for name, version in pins}
    changed = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        pinned = locked.get(normalise(name))
        if pinned is not None and pinned != dist.version:
            changed.append(f"{name}: locked {pinned}, newest {dist.version}")
    print("\n".join(sorted(changed, key=str.lower)) or f"every package is at its {lock} version")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
