"""What `make test` installs: every direct dependency pinned, benchmark-only packages in their own category."""

from __future__ import annotations

import importlib.metadata
import json
import tomllib

from packaging.specifiers import SpecifierSet

from tests.conftest import ROOT

PIPFILE = tomllib.loads((ROOT / "Pipfile").read_text(encoding="utf-8"))
LOCK = json.loads((ROOT / "Pipfile.lock").read_text(encoding="utf-8"))


def test_every_direct_dependency_is_pinned() -> None:
    for category in ("packages", "dev-packages", "bench"):
        for name, spec in PIPFILE[category].items():
            version = spec["version"] if isinstance(spec, dict) else spec
            assert version.startswith("=="), f"[{category}] {name} = {version!r} is not pinned"


def test_benchmark_only_packages_stay_out_of_make_test() -> None:
    """xgboost (with its ~700 MB CUDA collective library) and catboost (with matplotlib and plotly) are for
    bench/model_quality.py only."""
    assert {"xgboost", "nvidia-nccl-cu12", "catboost"} <= set(LOCK["bench"])
    for section in ("default", "develop"):
        assert not {"xgboost", "nvidia-nccl-cu12", "catboost"} & set(LOCK[section]), section
    bench = (ROOT / "bench" / "model_quality.py").read_text(encoding="utf-8")
    assert "from xgboost import" in bench and "from catboost import" in bench
    assert 'sync --categories="packages dev-packages bench"' in (ROOT / "Makefile").read_text(encoding="utf-8")


def test_gunicorn_is_held_below_27_only_while_mlflow_requires_it() -> None:
    """gunicorn 27 keeps kept-alive connections through a stop itself (benoitc/gunicorn#1236), but every
    MLflow release so far requires gunicorn<27. When MLflow lifts that cap this test fails: upgrade
    gunicorn then, re-verify src/server/worker.py (its stop handling can go) and update this test."""
    requirement = next(r for r in importlib.metadata.requires("mlflow") or [] if r.startswith("gunicorn"))
    allowed = SpecifierSet(requirement.split(";")[0].removeprefix("gunicorn").strip())
    assert "27.0.1" not in allowed, f"mlflow now allows gunicorn 27 ({requirement}): upgrade gunicorn"
    assert PIPFILE["packages"]["gunicorn"] == "==" + importlib.metadata.version("gunicorn") == "==26.2.0"
