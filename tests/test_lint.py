"""The code base stays ruff-clean: a finding fails the suite, not just a CI step."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_reports_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
