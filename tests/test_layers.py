"""The layer contract: nothing in src/ imports flask_api, arrows point down only, jobs load no web framework.

`lint-imports` (import-linter) checks the static import graph against the contracts in
pyproject.toml; the subprocess tests check what really gets imported at run time, which
also catches a web framework pulled in through a third-party package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT_IMPORTS), "pyproject.toml", "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, check=False, timeout=300)


def test_import_contracts_hold() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout, proc.stdout


def test_the_contract_catches_an_import_of_the_web_layer(tmp_path: Path) -> None:
    """The same contracts on a copy of the code where one scoring module imports flask_api: broken."""
    for name in ("src", "flask_api"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    scorer = tmp_path / "src" / "scoring" / "scorer.py"
    scorer.write_text(scorer.read_text(encoding="utf-8") + "\nfrom flask_api import views  # noqa\n",
                      encoding="utf-8")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0
    assert "Nothing in src/ imports the web layer (flask_api) BROKEN" in proc.stdout, proc.stdout
    assert "src.scoring.scorer -> flask_api" in proc.stdout, proc.stdout


@pytest.mark.parametrize("entry_point", ["src.batch.__main__", "src.monitoring.__main__", "src.scoring.model_store",
                                         "src.scoring.predlog"])
def test_jobs_import_no_web_framework(entry_point: str) -> None:
    code = (f"import sys, {entry_point}\n"
            "loaded = sorted(m for m in ('flask', 'flask_wtf', 'wtforms', 'flask_api') if m in sys.modules)\n"
            "print(','.join(loaded) or 'none')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none", f"{entry_point} imports {proc.stdout.strip()}"


def test_the_deploy_cli_loads_no_mlflow_or_pandas() -> None:
    """The workflows call ``python -m src.deploy`` many times per release: only the registry commands need
    MLflow (1.2 s of imports) and none needs pandas, so importing the CLI loads neither."""
    code = ("import sys, src.deploy.cli\n"
            "print(','.join(sorted(m for m in ('mlflow', 'pandas', 'lightgbm') if m in sys.modules)) or 'none')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "none", f"src.deploy.cli imports {proc.stdout.strip()}"


def test_openmp_threads_spin_only_briefly_once_the_project_is_imported() -> None:
    """libgomp reads its spin count when LightGBM loads: importing any entry point first bounds it.

    Its default spins 300,000 times at each barrier, which makes a 2-thread fit fight a CPU-bound
    neighbour for the cores; the project asks for 10,000 (fast when idle, yields under contention).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    shown = {}
    for code in ("import lightgbm", "import src.modeling.train"):
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False,
                              timeout=300, env={**env, "OMP_DISPLAY_ENV": "verbose"})
        assert proc.returncode == 0, proc.stderr
        shown[code] = re.search(r"GOMP_SPINCOUNT = '(\d+)'", proc.stderr).group(1)
    assert shown == {"import lightgbm": "300000", "import src.modeling.train": "10000"}
