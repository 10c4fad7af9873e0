"""Shared fixtures: project root, the public data folder, settings for each profile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.config import Settings, read_params, settings_from_dict

ROOT = Path(__file__).resolve().parents[1]
REAL_DATASETS = ("taiwan_credit", "credit_risk", "lending_club")
ALL_DATASETS = (*REAL_DATASETS, "risk_flag")


def shared_data_dir() -> Path:
    """Where the public datasets are: $SHARED_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


def load_params() -> dict:
    return read_params(ROOT / "params.yaml")


def make_settings(dataset: str, root: Path, **overrides: dict) -> Settings:
    """Settings for ``dataset`` whose paths live under ``root`` (a tmp dir), with section overrides."""
    params = load_params()
    params["dataset"] = dataset
    for section, values in overrides.items():
        params[section] = {**params[section], **values}
    return settings_from_dict(params, root)


def real_file(dataset: str) -> Path:
    """Path of a real public file, skipping the test when the data folder is absent."""
    params = load_params()
    path = shared_data_dir() / dataset / params["profiles"][dataset]["source"]["file"]
    if dataset == "risk_flag":
        path = shared_data_dir() / "risk_flag" / "test_unlabeled.csv"
    if not path.exists():
        pytest.skip(f"public data file {path} not present (see README, Data)")
    return path


@pytest.fixture
def params() -> dict:
    return load_params()
