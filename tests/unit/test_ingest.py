"""Ingest: real raw files with their quirks, header checks, missing files, sampling, download."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.common import PipelineError
from src.data import ingest as ingest_mod
from src.data.ingest import conform_columns, ingest, locate_raw_file, read_raw
from tests.conftest import make_settings, real_file
from tests.synthetic import synthetic_risk_flag

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def _read(dataset: str, tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    settings = make_settings(dataset, tmp_path)
    src = settings.profile.source
    raw = read_raw(real_file(dataset), src.format, src.read_options)
    return raw, ingest(raw, settings.profile)


def _link_real_file(dataset: str, tmp_path: Path):
    settings = make_settings(dataset, tmp_path)
    settings.external_dir.mkdir(parents=True)
    (settings.external_dir / settings.profile.source.file).symlink_to(real_file(dataset))
    return settings


# --- real files ------------------------------------------------------------------------------


def test_taiwan_quoted_header_and_exponent_numbers(tmp_path):
    raw, table = _read("taiwan_credit", tmp_path)
    assert "ID" in raw.columns and '"ID"' not in raw.columns  # quotes stripped from the header
    assert len(table) == 30000
    profile = make_settings("taiwan_credit", tmp_path).profile
    assert list(table.columns) == profile.expected_columns
    assert all(SNAKE.match(c) for c in table.columns)
    # "5e+05" in the file is a number, not text
    assert pd.api.types.is_numeric_dtype(table["limit_bal"])
    assert (table["limit_bal"] == 500000).any()
    assert table["limit_bal"].between(10000, 1000000).all()
    assert table["id"].is_unique
    assert set(table["default"].unique()) == {0, 1}


def test_taiwan_exponent_lines_really_exist_in_file():
    text = real_file("taiwan_credit").read_text(encoding="utf-8")
    assert "5e+05" in text  # the quirk the previous test relies on is present in the raw file


def test_credit_risk_crlf(tmp_path):
    _, table = _read("credit_risk", tmp_path)
    assert b"\r\n" in real_file("credit_risk").read_bytes()[:400]
    assert len(table) == 32581
    assert all(SNAKE.match(c) for c in table.columns)
    assert table.columns[-1] == "cb_person_cred_hist_length"  # no trailing \r on the last header
    assert set(table["cb_person_default_on_file"].unique()) == {"Y", "N"}  # no trailing \r on values
    assert pd.api.types.is_numeric_dtype(table["cb_person_cred_hist_length"])
    assert set(table["loan_status"].unique()) == {0, 1}
    # blanks are kept as missing for validation to judge
    assert table["person_emp_length"].isna().sum() == 895
    assert table["loan_int_rate"].isna().sum() == 3116


def test_lending_club_cr_only_line_endings(tmp_path):
    data = real_file("lending_club").read_bytes()
    assert b"\r" in data and b"\n" not in data
    _, table = _read("lending_club", tmp_path)
    assert len(table) == 9578
    assert all(SNAKE.match(c) for c in table.columns)
    assert set(table["not_fully_paid"].unique()) == {0, 1}
    assert pd.api.types.is_numeric_dtype(table["int_rate"])
    assert not table["purpose"].str.contains("\r").any()
    assert table.notna().all().all()


def test_run_writes_raw_table(tmp_path):
    settings = _link_real_file("lending_club", tmp_path)
    table = ingest_mod.run(settings)
    written = pd.read_parquet(settings.raw_table)
    assert len(written) == len(table) == 9578
    assert list(written.columns) == settings.profile.expected_columns


def test_run_with_sample_rows(tmp_path):
    _link_real_file("credit_risk", tmp_path)
    settings = make_settings("credit_risk", tmp_path, ingest={"sample_rows": 1000, "sample_seed": 3})
    table = ingest_mod.run(settings)
    assert len(table) == 1000
    assert len(pd.read_parquet(settings.raw_table)) == 1000


def test_run_warns_when_file_differs_from_reference(tmp_path, caplog):
    settings = make_settings("credit_risk", tmp_path)
    settings.external_dir.mkdir(parents=True)
    original = pd.read_csv(real_file("credit_risk"), nrows=20)
    original.to_csv(settings.external_dir / settings.profile.source.file, index=False)
    with caplog.at_level(logging.WARNING, logger="src.data.ingest"):
        table = ingest_mod.run(settings)
    assert len(table) == 20
    assert any("sha256" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_sha256_of_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    payload = np.random.default_rng(0).bytes(3 * ingest_mod.CHUNK + 17)  # spans several chunks
    path.write_bytes(payload)
    assert ingest_mod.sha256_of(path) == hashlib.sha256(payload).hexdigest()


# --- header checks ---------------------------------------------------------------------------


def test_wrong_header_names_missing_and_unexpected(tmp_path):
    profile = make_settings("taiwan_credit", tmp_path).profile
    raw = pd.read_csv(real_file("taiwan_credit"), nrows=5)
    raw = raw.rename(columns={"AGE": "AGE_YEARS"}).drop(columns=["PAY_AMT6"])
    raw["NOTES"] = "x"
    with pytest.raises(PipelineError) as err:
        conform_columns(raw, profile)
    message = str(err.value)
    missing = re.search(r"missing columns: ([^;.]*)", message)
    unexpected = re.search(r"unexpected columns: ([^;.]*)", message)
    assert missing and unexpected, message
    assert set(missing.group(1).split(", ")) == {"AGE", "PAY_AMT6"}
    assert set(unexpected.group(1).split(", ")) == {"AGE_YEARS", "NOTES"}
    assert "taiwan_credit" in message


def test_wrong_header_only_missing(tmp_path):
    profile = make_settings("credit_risk", tmp_path).profile
    raw = pd.read_csv(real_file("credit_risk"), nrows=5).drop(columns=["loan_status"])
    with pytest.raises(PipelineError, match="missing columns: loan_status") as err:
        conform_columns(raw, profile)
    assert "unexpected" not in str(err.value)


def test_column_order_in_file_does_not_matter(tmp_path):
    profile = make_settings("credit_risk", tmp_path).profile
    raw = pd.read_csv(real_file("credit_risk"), nrows=50)
    shuffled = raw[list(reversed(raw.columns))]
    pd.testing.assert_frame_equal(ingest(shuffled, profile), ingest(raw, profile))
    assert list(ingest(shuffled, profile).columns) == profile.expected_columns


def test_missing_raw_file_says_where_and_how(tmp_path):
    settings = make_settings("taiwan_credit", tmp_path)
    with pytest.raises(PipelineError) as err:
        locate_raw_file(settings)
    message = str(err.value)
    assert "data/external/taiwan_credit/UCI_Credit_Card.csv" in message
    # the download fallback location is named too
    assert "data/external/taiwan_credit/default of credit card clients.xls" in message
    assert settings.profile.source.instructions in message
    assert settings.profile.source.homepage in message
    with pytest.raises(PipelineError, match=r"UCI_Credit_Card\.csv"):
        ingest_mod.run(settings)


def test_missing_raw_file_without_download(tmp_path):
    settings = make_settings("lending_club", tmp_path)
    with pytest.raises(PipelineError) as err:
        locate_raw_file(settings)
    assert "data/external/lending_club/loan_data.csv" in str(err.value)
    assert settings.profile.source.instructions in str(err.value)


def test_locate_prefers_profile_file_then_download_file(tmp_path):
    settings = make_settings("taiwan_credit", tmp_path)
    settings.external_dir.mkdir(parents=True)
    xls = settings.external_dir / "default of credit card clients.xls"
    xls.write_bytes(b"")
    path, fmt, options = locate_raw_file(settings)
    assert (path, fmt, options) == (xls, "xls", {"header": 1, "engine": "calamine"})
    csv = settings.external_dir / "UCI_Credit_Card.csv"
    csv.write_text("x\n")
    assert locate_raw_file(settings)[:2] == (csv, "csv")


def test_read_raw_unsupported_format(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("{}")
    with pytest.raises(PipelineError, match="unsupported format 'json'"):
        read_raw(path, "json", {})


def test_read_raw_unreadable_file(tmp_path):
    path = tmp_path / "f.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(PipelineError, match="cannot be read as parquet"):
        read_raw(path, "parquet", {})


def test_read_raw_strips_header_whitespace(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text(" a ,b\t\n1,2\n")
    assert list(read_raw(path, "csv", {}).columns) == ["a", "b"]


# --- sampling --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def credit_raw() -> pd.DataFrame:
    return pd.read_csv(real_file("credit_risk"))


def test_sample_rows_exact_and_deterministic(credit_raw, tmp_path):
    profile = make_settings("credit_risk", tmp_path).profile
    first = ingest(credit_raw, profile, sample_rows=2500, seed=11)
    second = ingest(credit_raw, profile, sample_rows=2500, seed=11)
    other = ingest(credit_raw, profile, sample_rows=2500, seed=12)
    assert len(first) == len(other) == 2500
    pd.testing.assert_frame_equal(first, second)
    assert not first.equals(other)
    assert list(first.index) == list(range(2500))


def test_sample_rows_are_real_rows_in_file_order(credit_raw, tmp_path):
    profile = make_settings("credit_risk", tmp_path).profile
    tagged = credit_raw.assign(person_income=np.arange(len(credit_raw)) + 1)  # a row tag in a real column
    sample = ingest(tagged, profile, sample_rows=300, seed=5)
    tags = sample["person_income"].to_numpy()
    assert len(set(tags)) == 300
    assert (np.diff(tags) > 0).all()  # original order kept
    original = tagged.set_index("person_income").loc[tags].reset_index()
    pd.testing.assert_frame_equal(sample[profile.expected_columns], original[profile.expected_columns],
                                  check_like=False)


def test_sample_rows_larger_than_table_keeps_all(credit_raw, tmp_path):
    profile = make_settings("credit_risk", tmp_path).profile
    small = credit_raw.head(40)
    pd.testing.assert_frame_equal(ingest(small, profile, sample_rows=1000, seed=0), ingest(small, profile))


# --- risk_flag: Id / ID --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def risk_rows() -> pd.DataFrame:
    return synthetic_risk_flag(real_file("risk_flag"), rows=200, seed=1)


@pytest.mark.parametrize("spelling", ["Id", "ID"])
def test_risk_flag_accepts_both_id_spellings(spelling, risk_rows, tmp_path):
    profile = make_settings("risk_flag", tmp_path).profile
    raw = risk_rows.rename(columns={"Id": spelling})
    table = ingest(raw, profile)
    assert len(table) == 200
    assert list(table.columns) == profile.expected_columns
    assert table["id"].tolist() == risk_rows["Id"].tolist()


def test_risk_flag_both_spellings_at_once_fails(risk_rows, tmp_path):
    profile = make_settings("risk_flag", tmp_path).profile
    raw = risk_rows.assign(ID=risk_rows["Id"])
    with pytest.raises(PipelineError) as err:
        ingest(raw, profile)
    assert "given twice" in str(err.value)
    assert re.search(r"\bid\b", str(err.value))


def test_risk_flag_real_unlabeled_file_reports_missing_target(tmp_path):
    profile = make_settings("risk_flag", tmp_path).profile
    raw = read_raw(real_file("risk_flag"), "csv", {})
    with pytest.raises(PipelineError, match="missing columns: Risk_Flag"):
        ingest(raw, profile)


# --- a source joined with a second file on a key (source.join) ---------------------------------------------


def _sides() -> tuple[pd.DataFrame, pd.DataFrame]:
    """SYNTHETIC applicant profiles and payment histories, keyed by ID (the payments in another order)."""
    left = pd.DataFrame({"ID": [2, 1, 3, 4], "LIMIT_BAL": [2e4, 1e4, 3e4, 4e4]})
    right = pd.DataFrame({"ID": [3, 1, 4, 2], "PAY_0": [0, -1, 2, 1]})
    return left, right


def test_join_keeps_the_left_order_and_one_row_per_key() -> None:
    left, right = _sides()
    joined = ingest_mod.join_on_key(left, right, "ID", "applicants", "payments.csv")
    assert joined.to_dict("list") == {"ID": [2, 1, 3, 4], "LIMIT_BAL": [2e4, 1e4, 3e4, 4e4], "PAY_0": [1, -1, 0, 2]}


@pytest.mark.parametrize(("change", "message"), [
    (lambda left, r: (left, r[r["ID"] != 4]), "1 ID(s) in applicants but not payments.csv, e.g. 4"),
    (lambda left, r: (left[left["ID"] > 2], r), "2 ID(s) in payments.csv but not applicants, e.g. 1, 2"),
    (lambda left, r: (left, pd.concat([r, r.head(1)])),
     "payments.csv: 1 value(s) of 'ID' appear more than once, e.g. 3"),
    (lambda left, r: (left, r.rename(columns={"ID": "id"})), "payments.csv has no column 'ID' to join on"),
    (lambda left, r: (left, r.assign(LIMIT_BAL=1.0)), "both have column(s) LIMIT_BAL"),
])
def test_a_join_that_would_lose_or_invent_rows_is_an_error_naming_the_keys(change, message) -> None:
    left, right = change(*_sides())
    with pytest.raises(PipelineError, match=re.escape(message)):
        ingest_mod.join_on_key(left, right, "ID", "applicants", "payments.csv")
