"""The register stage's pure parts: gate decision, params flattening, signature from the profile."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from src.config import GateSettings
from src.modeling.pyfunc_model import OUTPUT_COLUMN, example_rows, signature_for
from src.modeling.register import active_params, flatten, gate_decision
from tests.conftest import ALL_DATASETS, load_params, make_settings

GATE = GateSettings(min_roc_auc=0.7, max_brier=0.2, max_regression=0.01, fail_pipeline=False)


def metrics(auc: float, brier: float = 0.1) -> dict[str, float]:
    return {"roc_auc": auc, "brier": brier}


def test_first_model_passes_on_floors_alone() -> None:
    decision = gate_decision(metrics(0.75), None, GATE)
    assert decision.passed and "no champion yet" in decision.reasons[0]


@pytest.mark.parametrize(("challenger", "champion", "passed"), [
    (0.80, 0.80, True),     # equal
    (0.795, 0.80, True),    # within max_regression
    (0.790, 0.80, True),    # exactly at the allowed regression
    (0.789, 0.80, False),   # just beyond
    (0.85, 0.80, True),     # better
])
def test_regression_against_champion(challenger: float, champion: float, passed: bool) -> None:
    decision = gate_decision(metrics(challenger), metrics(champion), GATE)
    assert decision.passed is passed
    if not passed:
        assert any("trails the champion" in r and "gate.max_regression" in r for r in decision.reasons)


def test_every_failed_floor_is_named() -> None:
    decision = gate_decision(metrics(0.6, brier=0.3), metrics(0.9), GATE)
    assert not decision.passed
    text = " | ".join(decision.reasons)
    assert "gate.min_roc_auc" in text and "gate.max_brier" in text and "gate.max_regression" in text
    assert len(decision.reasons) == 3


def test_brier_ceiling_can_be_switched_off() -> None:
    gate = GateSettings(min_roc_auc=0.5, max_brier=None, max_regression=0.01, fail_pipeline=False)
    assert gate_decision(metrics(0.7, brier=0.9), None, gate).passed


def test_flatten_names_keys_like_dvc_params_diff() -> None:
    flat = flatten({"train": {"lgbm": {"num_leaves": 15}, "seed": 1}, "drop": ["id"], "x": None})
    assert flat == {"train.lgbm.num_leaves": "15", "train.seed": "1", "drop": '["id"]', "x": "None"}


def test_active_params_hold_only_the_chosen_profile() -> None:
    params = load_params()
    flat = active_params(params, "credit_risk")
    assert flat["dataset"] == params["dataset"]
    assert flat["profile.target.column"] == "loan_status"
    assert not any(k.startswith("profiles.") for k in flat)
    assert flat["train.lgbm.num_leaves"] == str(params["train"]["lgbm"]["num_leaves"])


@pytest.mark.parametrize("dataset", ALL_DATASETS)
def test_signature_follows_the_profile(dataset: str, tmp_path: Path) -> None:
    profile = make_settings(dataset, tmp_path).profile
    signature = signature_for(profile)
    inputs = {c.name: c for c in signature.inputs.inputs}
    assert list(inputs) == profile.feature_names
    for name, spec in profile.features.items():
        expected = "double" if not spec.is_categorical else ("long" if spec.value_kind is int else "string")
        assert inputs[name].type.name == expected, name
        assert inputs[name].required is (not spec.nullable), name
    assert [c.name for c in signature.outputs.inputs] == [OUTPUT_COLUMN]


def test_example_rows_use_plain_dtypes(tmp_path: Path) -> None:
    profile = make_settings("taiwan_credit", tmp_path).profile
    frame = pd.DataFrame({name: pd.array([1, 2], dtype="Int64") if spec.is_categorical else [1.5, 2.5]
                          for name, spec in profile.features.items()})
    example = example_rows(frame, profile, rows=1)
    assert len(example) == 1
    assert example["education"].dtype == "int64" and example["limit_bal"].dtype == "float64"
    assert list(example.columns) == signature_for(profile).inputs.input_names()
