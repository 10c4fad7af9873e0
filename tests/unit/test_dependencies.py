"""What `make test` installs: every direct dependency pinned, benchmark-only packages in their own category."""

from __future__ import annotations

import json
import tomllib

from tests.conftest import ROOT

PIPFILE = tomllib.loads((ROOT / "Pipfile").read_text(encoding="utf-8"))
LOCK = json.loads((ROOT / "Pipfile.lock").read_text(encoding="utf-8"))


def test_every_direct_dependency_is_pinned() -> None:
    for category in ("packages", "dev-packages", "bench"):
        for name, spec in PIPFILE[category].items():
            version = spec["version"] if isinstance(spec, dict) else spec
            assert version.startswith("=="), f"[{category}] {name} = {version!r} is not pinned"


def test_benchmark_only_packages_stay_out_of_make_test() -> None:
    """xgboost (with its ~700 MB CUDA collective library) is for bench/model_quality.py only."""
    assert "xgboost" in LOCK["bench"] and "nvidia-nccl-cu12" in LOCK["bench"]
    for section in ("default", "develop"):
        assert not {"xgboost", "nvidia-nccl-cu12"} & set(LOCK[section]), section
    assert "from xgboost import" in (ROOT / "bench" / "model_quality.py").read_text(encoding="utf-8")
    assert 'sync --categories="packages dev-packages bench"' in (ROOT / "Makefile").read_text(encoding="utf-8")
