"""Schemas + validate: every raw row lands in exactly one of clean / rejected, with every reason."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.common import PipelineError, write_table
from src.config import Profile, build_profile
from src.data import validate as validate_mod
from src.data.ingest import ingest, read_raw
from src.data.schemas import (
    REASON_COLUMN,
    ROW_COLUMN,
    build_schema,
    normalise,
    row_failures,
    schema_failures,
    suspect_rows,
)
from src.data.validate import validate
from tests.conftest import load_params, make_settings, real_file
from tests.synthetic import synthetic_risk_flag

# --- helpers ---------------------------------------------------------------------------------


def profile_of(dataset: str, tmp_path: Path) -> Profile:
    return make_settings(dataset, tmp_path).profile


def assert_reconciles(result, rows_in: int) -> None:
    rep = result.report
    assert rep["rows_in"] == rows_in
    assert rep["accepted"] + rep["rejected"] == rows_in
    assert len(result.clean) == rep["accepted"]
    assert len(result.rejected) == rep["rejected"]
    assert result.rejected[ROW_COLUMN].is_unique
    assert rep["reject_share"] == pytest.approx(rep["rejected"] / rows_in, abs=1e-6)


def reasons_by_row(result) -> dict[int, str]:
    return dict(zip(result.rejected[ROW_COLUMN], result.rejected[REASON_COLUMN], strict=True))


def assert_per_reason_counts_match(result) -> None:
    """Each reason's count equals the number of rejected rows whose reasons name it."""
    texts = result.rejected[REASON_COLUMN]
    for key, count in result.report["rejected_per_reason"].items():
        column, check = key.split(": ", 1)
        pattern = rf"(?:^|; ){re.escape(column)}: {re.escape(check)} \(value "
        assert texts.str.contains(pattern, regex=True).sum() == count, key
    # and every reason text on a rejected row is counted under some key
    seen_keys = set()
    for text in texts:
        for part in re.split(r"; (?=[a-z_0-9]+: )", text):
            seen_keys.add(part.rsplit(" (value ", 1)[0])
    assert seen_keys == set(result.report["rejected_per_reason"])


# --- real credit_risk: impossible values quarantined ----------------------------------------------


@pytest.fixture(scope="module")
def credit_raw(tmp_path_factory) -> pd.DataFrame:
    profile = profile_of("credit_risk", tmp_path_factory.mktemp("cr"))
    return ingest(read_raw(real_file("credit_risk"), "csv", {}), profile)


@pytest.fixture(scope="module")
def credit_result(credit_raw, tmp_path_factory):
    return validate(credit_raw, profile_of("credit_risk", tmp_path_factory.mktemp("cr")))


def _independent_rejects(raw: pd.DataFrame, profile: Profile) -> set[int]:
    """Rows a careful analyst would reject, computed without the project's schema code."""
    bad = pd.Series(False, index=raw.index)
    for name, spec in profile.measured_columns.items():  # inputs and protected attributes alike
        col = raw[name]
        if not spec.nullable:
            bad |= col.isna()
        if spec.is_categorical and spec.values is not None:
            bad |= col.notna() & ~col.isin(list(spec.values))
        elif not spec.is_categorical:
            bad |= col.notna() & ~col.between(spec.min, spec.max)
    bad |= ~raw[profile.target_column].isin([0, 1])
    return set(raw.index[bad])


def test_credit_risk_rejects_exactly_impossible_rows(credit_raw, credit_result, tmp_path):
    profile = profile_of("credit_risk", tmp_path)
    expected = _independent_rejects(credit_raw, profile)
    assert expected, "the real file is known to hold impossible ages"
    assert set(credit_result.rejected[ROW_COLUMN]) == expected
    assert_reconciles(credit_result, len(credit_raw))


def test_credit_risk_impossible_ages_and_emp_lengths_named(credit_raw, credit_result):
    reasons = reasons_by_row(credit_result)
    ages = credit_raw.loc[credit_raw["person_age"] > 100, "person_age"]
    emp = credit_raw.loc[credit_raw["person_emp_length"] > 60, "person_emp_length"]
    assert set(ages) == {144.0, 123.0}
    assert set(emp) == {123.0}
    for row, value in ages.items():
        assert re.search(rf"person_age: .*\(value {value:g}(\.0)?\)", reasons[row]), reasons[row]
    for row, value in emp.items():
        assert re.search(rf"person_emp_length: .*\(value {value:g}(\.0)?\)", reasons[row]), reasons[row]
    assert_per_reason_counts_match(credit_result)
    per_reason = credit_result.report["rejected_per_reason"]
    assert sum(v for k, v in per_reason.items() if k.startswith("person_age")) == len(ages)
    assert sum(v for k, v in per_reason.items() if k.startswith("person_emp_length")) == len(emp)


def test_credit_risk_nullable_blanks_are_accepted(credit_raw, credit_result):
    rejected_rows = set(credit_result.rejected[ROW_COLUMN])
    accepted_raw = credit_raw.drop(index=list(rejected_rows))
    for col in ("person_emp_length", "loan_int_rate"):
        assert accepted_raw[col].isna().sum() > 0
        assert credit_result.clean[col].isna().sum() == accepted_raw[col].isna().sum()
        assert credit_result.report["missing_values"][col] == accepted_raw[col].isna().sum()
    # no other column has missing values in the clean table
    assert set(credit_result.report["missing_values"]) == {"person_emp_length", "loan_int_rate"}


def test_clean_table_types_and_target(credit_raw, credit_result, tmp_path):
    profile = profile_of("credit_risk", tmp_path)
    clean = credit_result.clean
    assert list(clean.columns) == [*profile.feature_names, *profile.protected, profile.target_column]
    assert "person_age" in profile.protected  # kept to measure fairness by age, not a model input
    assert clean[profile.target_column].dtype == np.int8
    assert set(clean[profile.target_column].unique()) == {0, 1}
    assert credit_result.report["default_rate"] == pytest.approx(clean[profile.target_column].mean(), abs=1e-6)
    for name in profile.numeric_features:
        assert clean[name].dtype == np.float64
    # the clean rows are the accepted raw rows, in order, with equal values
    accepted_raw = credit_raw.drop(index=list(credit_result.rejected[ROW_COLUMN])).reset_index(drop=True)
    np.testing.assert_array_equal(clean["person_income"].to_numpy(), accepted_raw["person_income"].to_numpy())
    assert clean["loan_grade"].tolist() == accepted_raw["loan_grade"].tolist()


def test_validating_clean_table_again_rejects_nothing(credit_result, tmp_path):
    again = validate(credit_result.clean, profile_of("credit_risk", tmp_path))
    assert again.report["rejected"] == 0
    assert len(again.clean) == len(credit_result.clean)


# --- synthetic messy frame -------------------------------------------------------------------------

GOOD = {
    "person_age": "30", "person_income": "50000", "person_home_ownership": "RENT", "person_emp_length": "5",
    "loan_intent": "EDUCATION", "loan_grade": "B", "loan_amnt": "1000", "loan_int_rate": "10.5",
    "loan_status": "0", "loan_percent_income": "0.1", "cb_person_default_on_file": "N",
    "cb_person_cred_hist_length": "3",
}

# row -> (cells to set, columns that must be named in its reasons; empty = row is accepted)
PLANTED: dict[int, tuple[dict[str, str], set[str]]] = {
    3: ({"person_age": "abc"}, {"person_age"}),
    5: ({"person_income": ""}, {"person_income"}),
    6: ({"person_income": "   "}, {"person_income"}),
    7: ({"loan_grade": "Z"}, {"loan_grade"}),
    8: ({"person_home_ownership": "CASTLE"}, {"person_home_ownership"}),
    9: ({"loan_status": "2"}, {"loan_status"}),
    11: ({"loan_status": "yes"}, {"loan_status"}),
    12: ({"loan_status": ""}, {"loan_status"}),
    13: ({"person_age": "-5", "loan_intent": "SHOPPING", "cb_person_default_on_file": "",
          "loan_amnt": "12,000"}, {"person_age", "loan_intent", "cb_person_default_on_file", "loan_amnt"}),
    14: ({"loan_percent_income": "11"}, {"loan_percent_income"}),
    15: ({"person_emp_length": "", "loan_int_rate": ""}, set()),   # nullable blanks
    16: ({"person_emp_length": "NA"}, set()),                        # pandas-style missing marker? see below
    17: ({"person_home_ownership": " OWN "}, set()),                 # padded code
    19: ({"loan_amnt": "1e3"}, set()),                               # exponent notation
    21: ({"person_age": "25.5", "loan_status": "1"}, set()),
    22: ({"person_age": "100"}, set()),                              # inclusive bounds
    23: ({"person_age": "18"}, set()),
}


def messy_frame(rows: int = 40, planted: bool = True) -> pd.DataFrame:
    records = []
    for i in range(rows):
        rec = dict(GOOD, person_income=str(10000 + i))  # person_income tags the row
        if planted and i in PLANTED:
            rec.update(PLANTED[i][0])
        records.append(rec)
    return pd.DataFrame(records, dtype="object")


def test_messy_frame_rows_reconcile_and_reasons(tmp_path):
    frame = messy_frame()
    result = validate(frame, profile_of("credit_risk", tmp_path))
    assert_reconciles(result, len(frame))
    # "NA" is text, not a number: pandas would only treat it as missing when reading a CSV
    expected_bad = {i for i, (_, cols) in PLANTED.items() if cols} | {16}
    assert set(result.rejected[ROW_COLUMN]) == expected_bad
    reasons = reasons_by_row(result)
    for row, (_cells, cols) in PLANTED.items():
        if not cols:
            continue
        named = {part.split(":", 1)[0] for part in reasons[row].split("; ")}
        assert named == cols, (row, reasons[row])
    assert_per_reason_counts_match(result)


def test_messy_reason_texts(tmp_path):
    result = validate(messy_frame(), profile_of("credit_risk", tmp_path))
    reasons = reasons_by_row(result)
    assert reasons[3] == "person_age: not a number (value 'abc')"
    assert reasons[5].startswith("person_income: missing")
    assert reasons[7] == "loan_grade: not one of A, B, C, D, E, F, G (value 'Z')"
    assert reasons[9].startswith("loan_status: not 0 or 1")
    assert reasons[11] == "loan_status: not a number (value 'yes')"
    assert "outside [18, 100]" in reasons[13] and "'12,000'" in reasons[13]
    assert "loan_percent_income: outside [0, 10]" in reasons[14]


def test_row_with_several_problems_rejected_once_with_all_reasons(tmp_path):
    result = validate(messy_frame(), profile_of("credit_risk", tmp_path))
    row = result.rejected[result.rejected[ROW_COLUMN] == 13]
    assert len(row) == 1
    text = row[REASON_COLUMN].iloc[0]
    assert len(text.split("; ")) == 4
    # the rejected table keeps the raw values as they arrived
    assert row["person_age"].iloc[0] == "-5"
    assert row["loan_amnt"].iloc[0] == "12,000"


def test_messy_accepted_rows_are_typed(tmp_path):
    result = validate(messy_frame(), profile_of("credit_risk", tmp_path))
    clean = result.clean.set_index(result.clean["person_income"].astype(int) - 10000)
    assert clean.loc[15, ["person_emp_length", "loan_int_rate"]].isna().all()
    assert clean.loc[17, "person_home_ownership"] == "OWN"
    assert clean.loc[19, "loan_amnt"] == 1000.0
    assert clean.loc[21, "person_age"] == 25.5
    assert clean.loc[21, "loan_status"] == 1
    assert clean.loc[0, "loan_status"] == 0


def test_taiwan_int_codes_duplicates_and_unknown_codes(tmp_path):
    profile = profile_of("taiwan_credit", tmp_path)
    base = dict.fromkeys(profile.expected_columns, 0)
    base.update(limit_bal=50000, sex=2, education=2, marriage=1, age=35, default=0)
    rows = [dict(base, id=i) for i in range(12)]
    rows[2]["id"] = 1            # duplicate of row 1: the later one is rejected
    rows[3]["id"] = 1            # and a third copy
    rows[4]["sex"] = 3           # unknown code
    rows[5]["education"] = 1.5   # not an integer code
    rows[6]["marriage"] = "x"    # not a number at all
    rows[7]["default"] = 5       # target not 0/1
    rows[8]["education"] = 2.0   # float spelling of a valid code: fine
    rows[9]["age"] = 17          # below the range
    rows[10]["sex"] = None       # blank in a non-nullable column
    rows[11]["default"] = 1
    frame = pd.DataFrame(rows)
    result = validate(frame, profile)
    assert_reconciles(result, 12)
    reasons = reasons_by_row(result)
    assert set(reasons) == {2, 3, 4, 5, 6, 7, 9, 10}
    assert reasons[2].startswith("id: duplicate id") and reasons[3].startswith("id: duplicate id")
    assert reasons[4].startswith("sex: not one of 1, 2")
    assert reasons[5].startswith("education: not a valid code")
    assert reasons[6] == "marriage: not a valid code (value 'x')"
    assert reasons[7].startswith("default: not 0 or 1")
    assert reasons[9].startswith("age: outside [18, 100]")
    assert reasons[10].startswith("sex: missing")
    assert_per_reason_counts_match(result)
    assert result.report["rejected_per_reason"]["id: duplicate id"] == 2
    # first occurrence of id 1 is kept, codes come out as integers
    assert result.clean["id"].tolist() == [0, 1, 8, 11]
    assert result.clean["education"].tolist() == [2, 2, 2, 2]
    assert result.clean["default"].tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("with_type_failure", [False, True])
def test_reason_shows_the_plain_value(with_type_failure, tmp_path):
    """A reject reason is read by people: the value should read '3', not numpy's 'np.int64(3)'.

    The schema's failure values are numpy scalars; once they are concatenated with the
    type failures of another cell (a text 'x' in marriage) their repr leaks into the reason.
    """
    profile = profile_of("taiwan_credit", tmp_path)
    base = dict.fromkeys(profile.expected_columns, 0)
    base.update(limit_bal=50000, sex=3, education=2, marriage=1, age=35, default=0, id=1)
    rows = [base, dict(base, id=2, sex=1)]  # int64 columns, as read from the CSV
    if with_type_failure:
        rows.append(dict(base, id=3, sex=1, marriage="x"))
    reasons = reasons_by_row(validate(pd.DataFrame(rows), profile))
    assert reasons[0] == "sex: not one of 1, 2 (value 3)"


def test_all_rows_clean(tmp_path):
    frame = messy_frame(10, planted=False)
    frame.loc[1, "loan_status"] = "1"
    result = validate(frame, profile_of("credit_risk", tmp_path))
    assert result.report["rejected"] == 0
    assert result.report["rejected_per_reason"] == {}
    assert len(result.rejected) == 0
    assert REASON_COLUMN in result.rejected.columns


def test_all_rows_rejected(tmp_path):
    frame = messy_frame(10, planted=False).assign(loan_grade="Q")
    result = validate(frame, profile_of("credit_risk", tmp_path))
    assert_reconciles(result, 10)
    assert result.report["accepted"] == 0
    assert result.report["default_rate"] is None
    assert result.report["rejected_per_reason"] == {"loan_grade: not one of A, B, C, D, E, F, G": 10}


def test_validate_ignores_input_index(tmp_path):
    frame = messy_frame()
    shifted = frame.set_axis(frame.index * 7 + 100)
    a = validate(frame, profile_of("credit_risk", tmp_path))
    b = validate(shifted, profile_of("credit_risk", tmp_path))
    pd.testing.assert_frame_equal(a.clean, b.clean)
    assert a.rejected[ROW_COLUMN].tolist() == b.rejected[ROW_COLUMN].tolist()


# --- schemas directly -------------------------------------------------------------------------------


def test_normalise_without_target_and_schema_without_target(tmp_path):
    profile = profile_of("credit_risk", tmp_path)
    frame = messy_frame(5, planted=False).drop(columns=["loan_status"])
    typed, failures = normalise(frame, profile, with_target=False)
    assert failures.empty
    assert "loan_status" not in build_schema(profile, with_target=False).columns
    assert schema_failures(typed, build_schema(profile, with_target=False)).empty
    # with the target required, its absence is reported, not raised
    missing = schema_failures(typed, build_schema(profile))
    assert len(missing) == 1
    assert "loan_status" in {*missing["column"], *missing["value"]}
    assert missing["check"].iloc[0] == "column missing"


def test_normalise_records_each_uncoercible_cell(tmp_path):
    profile = profile_of("credit_risk", tmp_path)
    frame = messy_frame(15)
    _, failures = normalise(frame, profile, with_protected=True)
    got = {(int(r.index), r.column, r.value) for r in failures.itertuples()}
    assert got == {(3, "person_age", "abc"), (11, "loan_status", "yes"), (13, "loan_amnt", "12,000")}


# --- risk_flag clean rules ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def risk_result(tmp_path_factory):
    profile = profile_of("risk_flag", tmp_path_factory.mktemp("rf"))
    raw = ingest(synthetic_risk_flag(real_file("risk_flag"), seed=0), profile)
    return raw, validate(raw, profile)


def test_risk_flag_footnote_marks_are_cleaned(risk_result):
    raw, result = risk_result
    assert_reconciles(result, len(raw))
    assert result.report["rejected"] == 0
    clean = result.clean.set_index("id")
    kota = raw.loc[raw["city"] == "Kota[6]", "id"]
    up = raw.loc[raw["state"] == "Uttar Pradesh[5]", "id"]
    assert len(kota) > 0 and len(up) > 0
    assert set(clean.loc[kota, "city"]) == {"Kota"}
    assert set(clean.loc[up, "state"]) == {"Uttar Pradesh"}
    assert "Kota" in set(clean["city"]) and "Uttar Pradesh" in set(clean["state"])
    # the raw table is untouched (rules apply to a copy)
    assert (raw["city"] == "Kota[6]").any()


def test_risk_flag_no_footnote_mark_survives(risk_result):
    """Cities with two footnotes ('Warangal[11][12]') must lose both marks."""
    raw, result = risk_result
    assert raw["city"].str.contains(r"\]\[").any()
    leftovers = sorted(set(result.clean["city"][result.clean["city"].str.contains(r"\[", regex=True)]))
    assert leftovers == []
    assert not result.clean["state"].str.contains(r"\[", regex=True).any()


def test_risk_flag_profession_underscores(tmp_path):
    profile = profile_of("risk_flag", tmp_path)
    raw = ingest(synthetic_risk_flag(real_file("risk_flag"), rows=30, seed=0), profile)
    raw.loc[2, "profession"] = "Civil_servant"
    raw.loc[5, "profession"] = "Air_traffic_controller"
    result = validate(raw, profile)
    assert result.report["rejected"] == 0
    clean = result.clean.set_index("id")
    assert clean.loc[raw.loc[2, "id"], "profession"] == "Civil servant"
    assert clean.loc[raw.loc[5, "id"], "profession"] == "Air traffic controller"
    assert not clean["profession"].str.contains("_").any()


def test_risk_flag_open_set_rejects_blank(tmp_path):
    profile = profile_of("risk_flag", tmp_path)
    raw = ingest(synthetic_risk_flag(real_file("risk_flag"), rows=20, seed=0), profile)
    raw.loc[4, "city"] = ""
    raw.loc[6, "state"] = "[3]"      # nothing left after cleaning
    result = validate(raw, profile)
    reasons = reasons_by_row(result)
    assert set(reasons) == {4, 6}
    assert reasons[4].startswith("city: ")
    assert reasons[6].startswith("state: ")


# --- validate.run ------------------------------------------------------------------------------


def _write_raw(settings, frame: pd.DataFrame) -> None:
    write_table(frame, settings.raw_table)


def test_run_fails_above_max_reject_share_after_writing_outputs(tmp_path):
    settings = make_settings("credit_risk", tmp_path, validate={"max_reject_share": 0.05})
    frame = messy_frame(40)  # 11 of 40 rows are bad
    _write_raw(settings, frame)
    with pytest.raises(PipelineError) as err:
        validate_mod.run(settings)
    message = str(err.value)
    assert "max_reject_share" in message
    assert "data/interim/rejected.parquet" in message
    quality = json.loads((settings.paths.metrics / "data_quality.json").read_text())
    assert quality["passed"] is False
    assert quality["max_reject_share"] == 0.05
    assert quality["rows_in"] == 40
    assert quality["accepted"] + quality["rejected"] == 40
    rejected = pd.read_parquet(settings.rejected_table)
    assert len(rejected) == quality["rejected"] == 11
    assert set(rejected[ROW_COLUMN]) == {i for i, (_, c) in PLANTED.items() if c} | {16}
    assert sum(quality["rejected_per_reason"].values()) >= quality["rejected"]
    assert len(pd.read_parquet(settings.clean_table)) == quality["accepted"]


def test_run_passes_below_max_reject_share(tmp_path):
    settings = make_settings("credit_risk", tmp_path, validate={"max_reject_share": 0.5})
    _write_raw(settings, messy_frame(40))
    result = validate_mod.run(settings)
    quality = json.loads((settings.paths.metrics / "data_quality.json").read_text())
    assert quality["passed"] is True
    assert quality["rejected"] == len(result.rejected)
    clean = pd.read_parquet(settings.clean_table)
    pd.testing.assert_frame_equal(clean, result.clean, check_dtype=False)


def test_run_fails_on_single_target_class(tmp_path):
    settings = make_settings("credit_risk", tmp_path)
    _write_raw(settings, messy_frame(30, planted=False))
    with pytest.raises(PipelineError, match="1 target class"):
        validate_mod.run(settings)


def test_run_without_raw_table(tmp_path):
    settings = make_settings("credit_risk", tmp_path)
    with pytest.raises(PipelineError, match=r"credit_risk\.parquet is missing"):
        validate_mod.run(settings)


# --- the batch path's pre-screen: pandera on the suspect rows only equals pandera on every row ---------

PROFILES = {name: build_profile(name, raw) for name, raw in load_params()["profiles"].items()}


def _valid(spec) -> st.SearchStrategy[object]:
    """SYNTHETIC valid values for one field, bounds included."""
    if spec.is_categorical:
        return st.sampled_from(list(spec.values)) if spec.values else st.text(min_size=1, max_size=4)
    low, high = (spec.min if spec.min is not None else -1e6), (spec.max if spec.max is not None else 1e6)
    bounds = [b for b in (spec.min, spec.max) if b is not None]
    inside = st.floats(min_value=low, max_value=high, allow_nan=False)
    return st.one_of(inside, st.sampled_from(bounds)) if bounds else inside


def _invalid(spec) -> st.SearchStrategy[object]:
    """SYNTHETIC near misses for one field: just outside a bound, missing, wrong kinds."""
    near = [np.nextafter(spec.max, math.inf), spec.max + 1] if spec.max is not None else []
    near += [np.nextafter(spec.min, -math.inf), spec.min - 1] if spec.min is not None else []
    return st.sampled_from([*near, None, np.nan, "", " ", "abc", math.inf, -math.inf, -1, 10**9, 0.5])


@st.composite
def raw_frames(draw: st.DrawFn, profile: Profile) -> pd.DataFrame:
    """Rows of valid values, most with one planted defect in a random field (so each defect is alone)."""
    n = draw(st.integers(min_value=1, max_value=12))
    names = list(profile.features)
    records = []
    for _ in range(n):
        record = {name: draw(_valid(spec)) for name, spec in profile.features.items()}
        broken = draw(st.one_of(st.none(), st.sampled_from(names)))
        if broken is not None:
            record[broken] = draw(_invalid(profile.features[broken]))
        if profile.id_column:
            record[profile.id_column] = draw(st.sampled_from([1, 2, None]))
        records.append(record)
    return pd.DataFrame(records, dtype=object)


@pytest.mark.parametrize("dataset", sorted(PROFILES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_pandera_on_the_suspect_rows_equals_pandera_on_every_row(dataset: str, data: st.DataObject) -> None:
    profile = PROFILES[dataset]
    typed, _ = normalise(data.draw(raw_frames(profile)), profile, with_target=False)
    rules = build_schema(profile, with_target=False, unique_ids=False)
    full = schema_failures(typed, rules)
    suspect = suspect_rows(typed, profile)
    assert suspect is not None  # normalise's dtypes: the pre-screen always applies
    assert set(full["index"]) <= set(np.flatnonzero(suspect))
    key = ["index", "column", "check"]
    fast = row_failures(typed, profile, rules)
    pd.testing.assert_frame_equal(fast.sort_values(key).reset_index(drop=True)[key],
                                  full.sort_values(key).reset_index(drop=True)[key], check_dtype=False)


def test_clean_rows_are_not_suspect_and_a_foreign_dtype_falls_back_to_pandera(tmp_path) -> None:
    profile = profile_of("credit_risk", tmp_path)
    typed, failures = normalise(messy_frame(planted=False), profile, with_target=False)
    assert failures.empty and not suspect_rows(typed, profile).any()
    assert suspect_rows(typed.astype({"loan_amnt": object}), profile) is None
    rules = build_schema(profile, with_target=False, unique_ids=False)
    foreign = typed.astype({"loan_amnt": object})
    fallback = row_failures(foreign, profile, rules)  # the schema's own verdict: the column's dtype
    assert fallback.to_dict("records") == schema_failures(foreign, rules).to_dict("records")
    assert fallback["check"].str.contains("float64").any()


def test_int64_code_columns_normalise_like_the_same_values_as_objects(tmp_path) -> None:
    """Parquet gives integer codes as int64: the fast path keeps them exact, as the per-value rule would."""
    profile = profile_of("taiwan_credit", tmp_path)
    codes = {"sex": [1, 2, 3], "education": [0, 4, 7], "marriage": [1, 3, 9]}
    frame = pd.DataFrame({name: codes.get(name, [1.0, 2.0, 3.0]) for name in profile.measured_columns})
    assert frame["sex"].dtype == np.int64
    fast, fast_failures = normalise(frame, profile, with_target=False, with_protected=True)
    slow, slow_failures = normalise(frame.astype(object), profile, with_target=False, with_protected=True)
    pd.testing.assert_frame_equal(fast, slow)
    assert fast_failures.empty and slow_failures.empty
    assert str(fast["sex"].dtype) == "Int64"
