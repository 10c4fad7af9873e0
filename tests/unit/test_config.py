"""params.yaml -> typed Settings: every profile builds, and every misconfiguration names its key."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import ConfigError, build_profile, env, load_settings, read_params, settings_from_dict
from tests.conftest import ALL_DATASETS, ROOT, load_params, make_settings

PARAMS = load_params()
PROFILES = sorted(PARAMS["profiles"])


def _params_for(dataset: str) -> dict:
    params = copy.deepcopy(PARAMS)
    params["dataset"] = dataset
    return params


def _build(params: dict, tmp_path: Path):
    return settings_from_dict(params, tmp_path)


def test_all_datasets_in_conftest_are_profiles(params):
    # taiwan_db is taiwan_credit read from a database (tests/integration/test_sql_source.py)
    assert set(ALL_DATASETS) | {"taiwan_db"} == set(params["profiles"])


@pytest.mark.parametrize("dataset", PROFILES)
def test_every_profile_builds(dataset, tmp_path):
    raw = PARAMS["profiles"][dataset]
    settings = make_settings(dataset, tmp_path)
    profile = settings.profile
    assert settings.dataset == dataset == profile.name
    assert profile.feature_names == list(raw["features"])
    assert profile.target_column == raw["target"]["column"]
    # target and every feature are produced by the rename map, target is not a feature
    produced = set(raw["rename"].values())
    assert set(profile.feature_names) <= produced
    assert profile.target_column in produced
    assert profile.target_column not in profile.features
    # every rename target is an expected column, in first-seen order, without repeats
    assert profile.expected_columns == list(dict.fromkeys(raw["rename"].values()))
    # the three feature groups partition the features
    groups = [*profile.target_encode, *profile.ordinal_features, *profile.numeric_features]
    assert sorted(groups) == sorted(profile.feature_names)
    assert len(groups) == len(set(groups))
    # paths live under the given root
    for name in ("external", "raw", "interim", "processed", "models", "metrics", "plots", "reports"):
        path = getattr(settings.paths, name)
        assert path == tmp_path / PARAMS["paths"][name]
    assert settings.raw_table == tmp_path / "data/raw" / f"{dataset}.parquet"
    assert settings.external_dir == tmp_path / "data/external" / dataset


@pytest.mark.parametrize("dataset", PROFILES)
def test_target_encode_columns_are_categorical_features(dataset, tmp_path):
    profile = make_settings(dataset, tmp_path).profile
    categorical = [n for n, f in profile.features.items() if f.is_categorical]
    assert categorical, f"{dataset} has no categorical input"
    for col in profile.target_encode:
        assert col in profile.features
        assert profile.features[col].is_categorical
    # every categorical that is not target-encoded has a closed, non-empty value set
    for col in profile.ordinal_features:
        assert profile.features[col].values
    # each categorical is target-encoded or ordinal-encoded (then perhaps split as categories), never both
    assert sorted([*profile.target_encode, *profile.ordinal_features]) == sorted(categorical)
    assert set(profile.native_categorical) <= set(profile.ordinal_features)


@pytest.mark.parametrize("dataset", PROFILES)
def test_numeric_ranges_are_ordered(dataset, tmp_path):
    profile = make_settings(dataset, tmp_path).profile
    for spec in profile.features.values():
        if not spec.is_categorical:
            assert spec.min is not None and spec.max is not None
            assert spec.min <= spec.max
            assert spec.values is None


def test_value_kind_int_codes_and_string_labels(tmp_path):
    taiwan = make_settings("taiwan_credit", tmp_path).profile
    assert taiwan.protected["sex"].value_kind is int
    assert taiwan.features["education"].value_kind is int
    credit = make_settings("credit_risk", tmp_path).profile
    assert credit.features["loan_grade"].value_kind is str
    # YAML's "Y"/"N" stay strings (quoted in params.yaml, so not parsed as booleans)
    assert set(credit.features["cb_person_default_on_file"].values) == {"Y", "N"}
    risk = make_settings("risk_flag", tmp_path).profile
    assert risk.features["city"].values is None
    assert risk.features["city"].value_kind is str


def test_overrides_reach_settings(tmp_path):
    settings = make_settings("credit_risk", tmp_path, split={"seed": 7, "valid_size": 0.2},
                             ingest={"sample_rows": 100})
    assert settings.split.seed == 7
    assert settings.split.valid_size == 0.2
    assert settings.split.test_size == PARAMS["split"]["test_size"]
    assert settings.ingest.sample_rows == 100
    # 0 and null both mean "all rows"
    assert make_settings("credit_risk", tmp_path, ingest={"sample_rows": 0}).ingest.sample_rows is None


def test_load_settings_resolves_paths_beside_params_file(tmp_path):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    settings = load_settings(tmp_path / "params.yaml")
    assert settings.paths.root == tmp_path.resolve()
    assert settings.model_file == tmp_path.resolve() / "models" / "model.joblib"
    assert settings.dataset == PARAMS["dataset"]


def test_load_settings_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


# --- errors name the offending key -------------------------------------------------------------


def test_unknown_dataset_lists_known_profiles(tmp_path):
    params = _params_for("no_such_dataset")
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    message = str(err.value)
    assert "no_such_dataset" in message
    for name in params["profiles"]:
        assert name in message


@pytest.mark.parametrize("section", ["paths", "ingest", "validate", "split", "train", "threshold", "evaluate",
                                     "profiles", "dataset"])
def test_missing_section_names_it(section, tmp_path):
    params = _params_for("credit_risk")
    del params[section]
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    assert re.search(rf"\b{section}\b", str(err.value)), str(err.value)
    assert "missing" in str(err.value)


@pytest.mark.parametrize(("section", "key"), [
    ("split", "valid_size"), ("split", "seed"), ("train", "lgbm"), ("train", "target_encoder"),
    ("threshold", "cost_false_negative"), ("validate", "max_reject_share"), ("evaluate", "top_features"),
    ("paths", "models"),
])
def test_missing_key_names_section_and_key(section, key, tmp_path):
    params = _params_for("credit_risk")
    del params[section][key]
    with pytest.raises(ConfigError, match=re.escape(f"{section}.{key}")):
        _build(params, tmp_path)


@pytest.mark.parametrize("key", ["rename", "target", "features", "source"])
def test_missing_profile_key_names_it(key, tmp_path):
    params = _params_for("lending_club")
    del params["profiles"]["lending_club"][key]
    with pytest.raises(ConfigError, match=re.escape(f"profiles.lending_club.{key}")):
        _build(params, tmp_path)


def test_target_encode_numeric_column_is_rejected(tmp_path):
    params = _params_for("credit_risk")
    params["profiles"]["credit_risk"]["target_encode"].append("person_age")
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    assert "profiles.credit_risk.target_encode" in str(err.value)
    assert "person_age" in str(err.value)


def test_target_encode_unknown_column_is_rejected(tmp_path):
    params = _params_for("credit_risk")
    params["profiles"]["credit_risk"]["target_encode"].append("shoe_size")
    with pytest.raises(ConfigError, match="shoe_size"):
        _build(params, tmp_path)


def test_feature_not_produced_by_rename(tmp_path):
    params = _params_for("taiwan_credit")
    params["profiles"]["taiwan_credit"]["features"]["pay_1"] = {"type": "numeric", "min": -2, "max": 9}
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    assert "pay_1" in str(err.value)
    assert "profiles.taiwan_credit.rename" in str(err.value)


def test_target_not_produced_by_rename(tmp_path):
    params = _params_for("taiwan_credit")
    params["profiles"]["taiwan_credit"]["target"]["column"] = "defaulted"
    with pytest.raises(ConfigError, match="defaulted"):
        _build(params, tmp_path)


def test_open_category_set_must_be_target_encoded(tmp_path):
    params = _params_for("risk_flag")
    params["profiles"]["risk_flag"]["target_encode"].remove("city")
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    assert "profiles.risk_flag.features.city" in str(err.value)
    assert "target-encode" in str(err.value)


def test_min_above_max(tmp_path):
    params = _params_for("credit_risk")
    params["profiles"]["credit_risk"]["features"]["loan_amnt"].update(min=100, max=18)
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    assert "profiles.credit_risk.features.loan_amnt" in str(err.value)
    assert "min 100" in str(err.value) and "max 18" in str(err.value)


def test_min_equal_max_is_allowed(tmp_path):
    params = _params_for("credit_risk")
    params["profiles"]["credit_risk"]["features"]["loan_amnt"].update(min=30, max=30)
    spec = _build(params, tmp_path).profile.features["loan_amnt"]
    assert spec.min == spec.max == 30.0


def test_bad_feature_type(tmp_path):
    params = _params_for("credit_risk")
    params["profiles"]["credit_risk"]["features"]["loan_amnt"]["type"] = "integer"
    with pytest.raises(ConfigError, match=re.escape("profiles.credit_risk.features.loan_amnt.type")):
        _build(params, tmp_path)


def test_empty_category_values(tmp_path):
    params = _params_for("credit_risk")
    params["profiles"]["credit_risk"]["features"]["loan_grade"]["values"] = {}
    with pytest.raises(ConfigError, match=re.escape("profiles.credit_risk.features.loan_grade.values")):
        _build(params, tmp_path)


def test_clean_rule_without_pattern(tmp_path):
    params = _params_for("risk_flag")
    params["profiles"]["risk_flag"]["clean"]["city"] = {"replace": ""}
    with pytest.raises(ConfigError, match=re.escape("profiles.risk_flag.clean.city.pattern")):
        _build(params, tmp_path)


@pytest.mark.parametrize(("valid", "test"), [
    (0.0, 0.15), (0.15, 0.0), (1.0, 0.1), (0.15, 1.0), (-0.1, 0.15), (0.5, 0.5), (0.6, 0.5),
])
def test_bad_split_sizes(valid, test, tmp_path):
    with pytest.raises(ConfigError) as err:
        make_settings("credit_risk", tmp_path, split={"valid_size": valid, "test_size": test})
    assert "split.valid_size" in str(err.value)
    assert "split.test_size" in str(err.value)


def test_build_profile_directly_reports_profile_name():
    raw = copy.deepcopy(PARAMS["profiles"]["lending_club"])
    raw["features"]["fico"]["min"] = 900
    with pytest.raises(ConfigError, match=re.escape("profiles.my_copy.features.fico")):
        build_profile("my_copy", raw)


@pytest.mark.parametrize(("sql", "fmt", "message"), [
    ({"url_env": "DB_URL"}, "parquet", "'profiles.taiwan_db.source.sql' needs exactly one of 'table' and 'query'"),
    ({"url_env": "DB_URL", "table": "t", "query": "select 1"}, "parquet", "exactly one of 'table' and 'query'"),
    ({"url_env": "postgresql://u:p@h/db", "table": "t"}, "parquet", "source.sql.url_env"),
    ({"url_env": "DB_URL", "table": "t"}, "csv", "source.format"),
])
def test_a_bad_sql_source_is_an_error_naming_its_key(sql, fmt, message):
    raw = copy.deepcopy(PARAMS["profiles"]["taiwan_db"])
    raw["source"] = {**raw["source"], "sql": sql, "format": fmt}
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_profile("taiwan_db", raw)


def test_the_demo_profile_is_taiwan_credit_read_from_a_table_and_a_file():
    demo, plain = (build_profile(name, PARAMS["profiles"][name]) for name in ("taiwan_db", "taiwan_credit"))
    assert demo.source.sql.table == "applicants" and demo.source.sql.url_env == "TAIWAN_DB_URL"
    assert demo.source.join.file == "payments.csv" and demo.source.join.on == "ID"
    assert demo.model_dump(exclude={"name", "title", "source"}) == plain.model_dump(exclude={"name", "title", "source"})


# --- YAML 1.2 reading (DVC rewrites params.yaml without quotes) --------------------------------------


def test_read_params_keeps_yes_no_as_strings(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: yes\nb: no\nc: true\nd: False\ne: on\nf: Y\ng: 5e-1\n", encoding="utf-8")
    loaded = read_params(path)
    assert loaded == {"a": "yes", "b": "no", "c": True, "d": False, "e": "on", "f": "Y", "g": loaded["g"]}
    assert isinstance(loaded["a"], str) and isinstance(loaded["c"], bool)


def test_unquoted_category_codes_build_the_same_profiles(tmp_path):
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    # as `dvc exp run -S` writes it back: YAML 1.2 needs no quotes around yes/no/Y/N
    unquoted = re.sub(r"""(["'])(yes|no|Y|N)\1""", r"\2", text)
    (tmp_path / "params.yaml").write_text(unquoted, encoding="utf-8")
    for dataset in ("risk_flag", "credit_risk", "lending_club"):
        params = read_params(tmp_path / "params.yaml")
        params["dataset"] = dataset
        unq = settings_from_dict(params, tmp_path).profile
        ref = make_settings(dataset, tmp_path).profile
        for name, spec in ref.features.items():
            assert unq.features[name].values == spec.values, (dataset, name)
    risk = make_settings("risk_flag", tmp_path).profile
    assert set(risk.features["car_ownership"].values) == {"yes", "no"}


def test_repayment_status_codes_are_labelled(tmp_path):
    spec = _build(_params_for("taiwan_credit"), tmp_path).profile.features["pay_0"]
    assert spec.value_label(-1) == spec.value_label(-1.0) == "paid in full"
    assert spec.value_label(-2) == "no balance (card not used)"
    assert spec.value_label(0) == "revolving credit (minimum paid)"
    assert spec.value_label(2) is None and spec.value_label(True) is None and spec.value_label("x") is None


@pytest.mark.parametrize(("labels", "needle"), [
    ([1, 2], "must map numbers to labels"),
    ({}, "must map numbers to labels"),
    ({"minus one": "paid"}, "is not a number"),
    ({-5: "far below"}, "outside the feature's range"),
    ({-1: ""}, "non-empty text label"),
    ({-1: 3}, "non-empty text label"),
])
def test_bad_value_labels_name_the_key(labels, needle, tmp_path):
    params = _params_for("taiwan_credit")
    params["profiles"]["taiwan_credit"]["features"]["pay_0"]["value_labels"] = labels
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    assert "profiles.taiwan_credit.features.pay_0.value_labels" in str(err.value) and needle in str(err.value)


def test_value_labels_are_for_numeric_features(tmp_path):
    params = _params_for("taiwan_credit")
    params["profiles"]["taiwan_credit"]["features"]["education"]["value_labels"] = {1: "one"}
    with pytest.raises(ConfigError, match="is for numeric features"):
        _build(params, tmp_path)


# --- strictness: the mistakes a new user made, each one line naming key, value and what is allowed ---------


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("gate", "fail_pipeline", "no", "params.yaml: 'gate.fail_pipeline' is 'no'; it must be true or false"),
    ("ingest", "sample_rows", "1000", "params.yaml: 'ingest.sample_rows' is '1000'; it must be a whole number"),
    ("serve", "max_batch", -3, "params.yaml: 'serve.max_batch' is -3; it must be a number at least 1"),
    ("serve", "max_batch", "abc", "params.yaml: 'serve.max_batch' is 'abc'; it must be a whole number"),
    ("batch", "chunk_rows", 2.9, "params.yaml: 'batch.chunk_rows' is 2.9; it must be a whole number"),
    ("serve", "refer_margin", 0.7, "params.yaml: 'serve.refer_margin' is 0.7; it must be a number below 0.5"),
    ("gate", "min_roc_auc", True, "params.yaml: 'gate.min_roc_auc' is True; it must be a number"),
    ("batch", "compression", "zip", "params.yaml: 'batch.compression' is 'zip'; it must be one of snappy, zstd, "
                                    "gzip, lz4, brotli or none"),
])
def test_a_wrong_value_is_one_line_naming_key_value_and_what_is_allowed(section, key, value, message, tmp_path):
    params = _params_for("taiwan_credit")
    params[section][key] = value
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("path", "message"), [
    (("serve", "max_bach"), "params.yaml: unknown key 'serve.max_bach' (did you mean 'serve.max_batch'?)"),
    (("servee",), "params.yaml: unknown key 'servee' (did you mean 'serve'?)"),
    (("profiles", "taiwan_credit", "features", "pay_0", "nulable"),
     "params.yaml: unknown key 'profiles.taiwan_credit.features.pay_0.nulable' "
     "(did you mean 'profiles.taiwan_credit.features.pay_0.nullable'?)"),
    (("train", "target_encoder", "smoth"),
     "params.yaml: unknown key 'train.target_encoder.smoth' (did you mean 'train.target_encoder.smooth'?)"),
])
def test_a_misspelt_key_is_an_error_naming_the_closest_valid_key(path, message, tmp_path):
    params = _params_for("taiwan_credit")
    node = params
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = 5
    with pytest.raises(ConfigError) as err:
        _build(params, tmp_path)
    assert str(err.value) == message


def test_every_default_is_written_once_in_the_models(tmp_path):
    """Sections params.yaml may leave out load with the models' defaults (no second copy of them)."""
    params = _params_for("taiwan_credit")
    for section in ("deploy", "retrain", "monitoring", "batch"):
        params.pop(section)
    for key in ("log_spool_dir", "log_fsync_seconds", "log_ship_seconds", "num_threads"):
        params["serve"].pop(key)
    settings = _build(params, tmp_path)
    assert settings.batch.chunk_rows == 100_000 and settings.deploy.region == "us-east-1"
    assert settings.serve.log_fsync_seconds == 1.0 and settings.serve.num_threads == 1
    assert settings.serve.log_spool_dir is None and settings.serve.log_ship_seconds == 0.1


def test_a_stage_exits_non_zero_with_the_one_line_error(tmp_path):
    """The CLIs (what `dvc repro` runs) stop with exit code 1 and the line, never a traceback."""
    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    (tmp_path / "params.yaml").write_text(text.replace("fail_pipeline: false", 'fail_pipeline: "no"'),
                                          encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "src.data.split"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, check=False)
    assert proc.returncode == 1
    assert "params.yaml: 'gate.fail_pipeline' is 'no'; it must be true or false" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("WEB_CONCURRENCY", "two", "WEB_CONCURRENCY must be a whole number, got 'two'"),
    ("GUNICORN_THREADS", "0", "GUNICORN_THREADS must be at least 1, got '0'"),
])
def test_environment_numbers_are_checked_naming_the_variable(variable, value, message, monkeypatch):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=re.escape(message)):
        env.number(variable, int, 2, minimum=1)


def test_environment_overrides_are_read_in_one_place(tmp_path, monkeypatch):
    settings = make_settings("taiwan_credit", tmp_path)
    monkeypatch.delenv("MODEL_URI", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert env.model_uri(settings) == "models:/credit-default-taiwan_credit@champion"
    assert env.database_url(settings) == f"sqlite:///{(tmp_path / 'predictions.db').resolve()}"
    monkeypatch.setenv("MODEL_URI", "models:/m/3")
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/log")
    assert (env.model_uri(settings), env.database_url(settings)) == ("models:/m/3", "postgresql://db/log")
