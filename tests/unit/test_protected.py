"""Protected attributes and risk directions in the profiles: declared, checked, kept out of the model."""

from __future__ import annotations

import copy
import re

import pandas as pd
import pytest

from src.config import ConfigError, settings_from_dict
from src.config.profile import PROTECTED_MESSAGE
from src.data.schemas import REASON_COLUMN
from src.data.validate import validate
from src.modeling.features import model_columns, monotone_constraints
from src.scoring.model_store import load_model
from tests.conftest import load_params

PARAMS = load_params()
# ECOA / Regulation B prohibited bases present in each file (lending_club has none)
EXPECTED = {"taiwan_credit": {"sex", "marriage", "age"}, "credit_risk": {"person_age"},
            "risk_flag": {"age", "married_single"}, "lending_club": set()}


def _params(dataset: str, **fairness: object) -> dict:
    params = copy.deepcopy(PARAMS)
    params["dataset"] = dataset
    if fairness:
        params["fairness"] = {**params.get("fairness", {}), **fairness}
    return params


def _settings(params: dict, tmp_path):
    return settings_from_dict(params, tmp_path)


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_protected_attributes_are_declared_and_never_inputs(dataset, tmp_path):
    profile = _settings(_params(dataset), tmp_path).profile
    assert set(profile.protected) == EXPECTED[dataset]
    assert not set(profile.features) & set(profile.protected)
    assert profile.protected_inputs == []
    for name, spec in profile.protected.items():
        if not spec.is_categorical:  # numeric ones (age) are banded, with 62 (ECOA's "elderly") an edge
            assert spec.bands is not None and 62 in spec.bands, name


def test_research_switch_puts_them_back(tmp_path):
    profile = _settings(_params("taiwan_credit", use_protected=True), tmp_path).profile
    assert {"sex", "marriage", "age"} <= set(profile.features)
    assert sorted(profile.protected_inputs) == ["age", "marriage", "sex"]
    assert profile.features["age"].min == 18 and not hasattr(profile.features["age"], "bands")


def test_use_protected_takes_only_a_boolean(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("'fairness.use_protected' is 'yes'; it must be true or false")):
        _settings(_params("taiwan_credit", use_protected="yes"), tmp_path)


def test_a_protected_attribute_listed_as_a_feature_is_an_error(tmp_path):
    params = _params("taiwan_credit")
    profile = params["profiles"]["taiwan_credit"]
    profile["features"]["sex"] = copy.deepcopy(profile["protected"]["sex"])
    with pytest.raises(ConfigError) as err:
        _settings(params, tmp_path)
    assert "profiles.taiwan_credit.features.sex" in str(err.value) and "protected attribute" in str(err.value)


@pytest.mark.parametrize(("bands", "needle"), [
    ([35, 25], "increasing numbers"),
    ([], "increasing numbers"),
    ([18, 62], "above min 18"),
    ([62, 120], "at most max 100"),
])
def test_bad_bands_name_the_key(bands, needle, tmp_path):
    params = _params("taiwan_credit")
    params["profiles"]["taiwan_credit"]["protected"]["age"]["bands"] = bands
    with pytest.raises(ConfigError) as err:
        _settings(params, tmp_path)
    assert "profiles.taiwan_credit.protected.age" in str(err.value) and needle in str(err.value)


def test_every_profile_states_its_policy_and_numeric_attributes_have_bands(tmp_path):
    params = _params("lending_club")
    del params["profiles"]["lending_club"]["protected"]
    with pytest.raises(ConfigError, match=re.escape("missing key 'profiles.lending_club.protected'")):
        _settings(params, tmp_path)
    params = _params("taiwan_credit")
    del params["profiles"]["taiwan_credit"]["protected"]["age"]["bands"]
    with pytest.raises(ConfigError, match=r"protected\.age\.bands' .*required for a numeric attribute"):
        _settings(params, tmp_path)


def test_bands_are_for_numeric_attributes(tmp_path):
    params = _params("taiwan_credit")
    params["profiles"]["taiwan_credit"]["protected"]["sex"]["bands"] = [1.5]
    with pytest.raises(ConfigError, match="is for numeric attributes"):
        _settings(params, tmp_path)


def test_monotone_rules(tmp_path):
    params = _params("lending_club")
    params["profiles"]["lending_club"]["features"]["purpose"]["monotone"] = "increasing"  # target-encoded
    with pytest.raises(ConfigError, match=r"features\.purpose\.monotone.*target-encoded"):
        _settings(params, tmp_path)
    params = _params("credit_risk")
    params["profiles"]["credit_risk"]["features"]["loan_amnt"]["monotone"] = "up"
    with pytest.raises(ConfigError, match=r"features\.loan_amnt\.monotone"):
        _settings(params, tmp_path)
    params = _params("credit_risk")
    params["profiles"]["credit_risk"]["protected"]["person_age"]["monotone"] = "increasing"
    with pytest.raises(ConfigError, match=r"protected\.person_age.*is for model inputs"):
        _settings(params, tmp_path)
    params = _params("credit_risk")
    params["train"]["lgbm"]["monotone_constraints"] = [1, 0]
    with pytest.raises(ConfigError, match=r"train\.lgbm\.monotone_constraints.*monotone: increasing"):
        _settings(params, tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    ({"native_categorical": ["loan_grade"], "target_encode": ["loan_grade"]},
     r"native_categorical.*'loan_grade'.*outside target_encode"),
    ({"native_categorical": ["loan_amnt"]}, r"native_categorical.*'loan_amnt'.*not a categorical"),
    ({"features.loan_grade.monotone": "increasing"}, r"native_categorical.*'loan_grade'.*risk direction"),
    ({"lgbm": {"monotone_constraints": [1]}}, r"profiles\.credit_risk\.lgbm\.monotone_constraints"),
    ({"lgbm": {"categorical_feature": [0]}}, r"profiles\.credit_risk\.lgbm\.categorical_feature"),
    ({"native_categorical": None}, r"profiles\.credit_risk\.native_categorical"),
    ({"drop:lgbm": None}, r"missing key 'profiles\.credit_risk\.lgbm'"),
])
def test_native_categoricals_and_profile_lgbm_are_checked(tmp_path, change, message):
    params = _params("credit_risk")
    profile = params["profiles"]["credit_risk"]
    for key, value in change.items():
        if key.startswith("drop:"):
            del profile[key.removeprefix("drop:")]
        elif key.startswith("features."):
            _, column, field = key.split(".")
            profile["features"][column][field] = value
        else:
            profile[key] = value
    with pytest.raises(ConfigError, match=message):
        _settings(params, tmp_path)


def test_constraints_follow_the_encoded_column_order(tmp_path):
    profile = _settings(_params("lending_club"), tmp_path).profile
    columns = model_columns(profile)
    constraints = monotone_constraints(profile)
    assert constraints is not None and len(constraints) == len(columns)
    by_column = dict(zip(columns, constraints, strict=True))
    assert by_column["fico"] == -1 and by_column["int_rate"] == 1 and by_column["credit_policy"] == -1
    assert by_column["purpose"] == 0 and by_column["installment"] == 0
    assert columns[0] == "purpose"  # target-encoded first, then ordinal, then numeric


def test_validate_keeps_protected_columns_for_measurement(tmp_path):
    settings = _settings(_params("credit_risk"), tmp_path)
    raw = pd.DataFrame({
        "person_age": ["30", "250", "41"], "person_income": ["50000", "60000", "70000"],
        "person_home_ownership": ["RENT", "OWN", "RENT"], "person_emp_length": ["5", "2", ""],
        "loan_intent": ["EDUCATION", "MEDICAL", "VENTURE"], "loan_grade": ["A", "B", "C"],
        "loan_amnt": ["1000", "2000", "3000"], "loan_int_rate": ["10.5", "", "12"],
        "loan_status": ["0", "1", "0"], "loan_percent_income": ["0.1", "0.2", "0.3"],
        "cb_person_default_on_file": ["N", "Y", "N"], "cb_person_cred_hist_length": ["3", "4", "5"],
    })
    result = validate(raw, settings.profile)
    assert "person_age" in result.clean.columns and result.clean["person_age"].tolist() == [30.0, 41.0]
    assert result.rejected[REASON_COLUMN].str.contains("person_age").tolist() == [True]


def test_with_inputs_follows_the_model(tmp_path):
    profile = _settings(_params("taiwan_credit"), tmp_path).profile
    old_model = profile.with_inputs(["limit_bal", "sex", "age"])  # a model trained before the policy
    assert list(old_model.features) == ["limit_bal", "sex", "age"] and old_model.protected_inputs == ["sex", "age"]
    assert profile.with_inputs(list(profile.features)) is profile
    with pytest.raises(ConfigError, match="not columns of profile 'taiwan_credit'"):
        profile.with_inputs(["limit_bal", "shoe_size"])


def test_the_message_for_a_protected_field_says_why():
    assert "protected attribute" in PROTECTED_MESSAGE and "does not use" in PROTECTED_MESSAGE


def test_a_served_model_is_described_by_its_own_inputs(trained_project) -> None:
    """params.yaml's policy today does not change what a model asks for: its recorded inputs do."""
    research = _settings(_params("taiwan_credit", use_protected=True), trained_project.root)
    assert "sex" in research.profile.features  # today's params would put them back...
    loaded = load_model(str(trained_project.model_dir), research)
    inputs = loaded.scorer.meta["features"]
    assert list(loaded.scorer.profile.features) == inputs  # ...but this model was trained without them
    assert not set(inputs) & {"sex", "marriage", "age"}
    meta = loaded.scorer.meta
    assert meta["protected"] == ["sex", "marriage", "age"] and meta["protected_inputs"] == []
