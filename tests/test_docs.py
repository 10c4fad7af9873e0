"""The manual builds with `mkdocs build --strict` (a broken link, anchor or a page left out fails), the
README stays short, and `make` alone lists the targets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

MKDOCS = Path(sys.executable).with_name("mkdocs")


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    proc = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_every_page_is_in_the_navigation_and_every_nav_entry_exists() -> None:
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    listed = {page for entry in nav for page in entry.values()}
    on_disk = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert listed == on_disk


def test_the_readme_is_short_and_links_the_manual() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert f"(docs/{page.name})" in text, page.name
    assert "make run" in text and "make test" in text


def test_make_alone_lists_the_targets() -> None:
    proc = subprocess.run(["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    targets = {line.split()[0] for line in lines[1:] if line.startswith("  ")}
    assert {"run", "test", "docs", "retrain", "score", "serve"} <= targets, proc.stdout
