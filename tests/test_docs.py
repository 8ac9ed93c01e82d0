"""The README is a front door and the manual lives in docs/: every link resolves inside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) < 12_000
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_every_relative_link_resolves_inside_the_repository():
    broken = []
    for page in _docs():
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_every_docs_page_is_listed_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md" and f"({p.name})" not in index]
    assert not missing, missing


def test_no_tracked_file_points_outside_the_repository():
    tracked = subprocess.run(["git", "grep", "-l", "../shared", "--", ":!.ci", ":!tests/test_docs.py"], cwd=ROOT,
                             capture_output=True, text=True)
    assert tracked.stdout.strip() == "", tracked.stdout
