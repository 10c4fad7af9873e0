"""Monitoring inputs: files and folders, the prediction log window, validation of applicant rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from src.monitoring import sources
from src.monitoring.sources import InputError
from src.scoring.predlog import PredictionLog
from tests.conftest import ROOT, make_settings

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def synthetic_applicants(rows: int = 6) -> pd.DataFrame:
    """SYNTHETIC taiwan_credit applicants (valid values), one row per index."""
    base = {"limit_bal": 50000.0, "education": 2,
            **{f"pay_{i}": 0.0 for i in (0, 2, 3, 4, 5, 6)},
            **{f"bill_amt{i}": 1000.0 for i in range(1, 7)}, **{f"pay_amt{i}": 500.0 for i in range(1, 7)}}
    return pd.DataFrame([{**base, "limit_bal": 10000.0 * (i + 1)} for i in range(rows)])


def test_parse_time_accepts_iso_and_spans() -> None:
    assert sources.parse_time("2026-11-20", NOW) == datetime(2026, 11, 20, tzinfo=UTC)
    assert sources.parse_time("2026-11-20T10:00+02:00", NOW) == datetime(2026, 11, 20, 8, tzinfo=UTC)
    assert sources.parse_time("24h", NOW) == NOW - timedelta(hours=24)
    assert sources.parse_time("7d", NOW) == NOW - timedelta(days=7)
    with pytest.raises(InputError, match="cannot read time 'yesterday'"):
        sources.parse_time("yesterday", NOW)


def test_read_frame_reads_a_folder_of_csv_and_parquet(tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    (folder / "part=2").mkdir(parents=True)
    synthetic_applicants(3).to_csv(folder / "a.csv", index=False)
    synthetic_applicants(2).to_parquet(folder / "part=2" / "b.parquet")
    (folder / "notes.txt").write_text("ignored")
    assert len(sources.read_frame(str(folder))) == 5
    with pytest.raises(InputError, match="no such file or folder"):
        sources.read_frame(str(tmp_path / "missing.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"holds no \.csv or \.parquet"):
        sources.read_frame(str(tmp_path / "empty"))


def test_applicant_rows_accept_raw_names_and_count_rejects() -> None:
    settings = make_settings("taiwan_credit", ROOT)
    frame = synthetic_applicants(6).rename(columns={"limit_bal": "LIMIT_BAL"})
    frame["id"] = range(6)
    frame.loc[2, "pay_0"] = 12  # outside [-2, 9]
    frame["education"] = frame["education"].astype(object)
    frame.loc[4, "education"] = "x"  # not a code
    batch = sources.applicant_rows(frame, settings.profile, "batch.csv")
    assert (batch.rows_in, len(batch.frame), batch.rejected) == (6, 4, 2)
    assert batch.frame["id"].tolist() == [0, 1, 3, 5]
    assert set(batch.rejected_reasons) == {"pay_0: outside [-2, 9]", "education: not a valid code"}
    with pytest.raises(InputError, match=r"missing column\(s\) limit_bal.*--include-features"):
        sources.applicant_rows(frame.drop(columns="LIMIT_BAL"), settings.profile, "scored.parquet")


def test_check_scores_names_bad_rows() -> None:
    frame = pd.DataFrame({"probability": [0.1, 1.5, None]})
    with pytest.raises(InputError, match=r"2 value\(s\).*rows 1, 2"):
        sources.check_scores(frame, "scored.parquet")


def test_read_log_window(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    plog = PredictionLog(url)
    rows = json.loads(synthetic_applicants(3).to_json(orient="records"))
    results = [{"probability_of_default": p, "decision": d} for p, d in ((0.1, "approve"), (0.2, "refer"),
                                                                          (0.6, "decline"))]
    plog.submit("req-1", "api", "credit-default-taiwan_credit", "4", rows, results)
    plog.close()
    now = datetime.now(UTC)
    frame = sources.read_log(url, now - timedelta(hours=1), None)
    assert frame["id"].tolist() == ["req-1:0", "req-1:1", "req-1:2"]
    assert frame["probability"].tolist() == [0.1, 0.2, 0.6] and frame["model_version"].tolist() == ["4"] * 3
    assert frame["limit_bal"].tolist() == [10000.0, 20000.0, 30000.0]
    with pytest.raises(InputError, match="holds no rows in the window"):
        sources.read_log(url, now - timedelta(days=3), now - timedelta(days=2))
    with pytest.raises(InputError, match="empty time window"):
        sources.read_log(url, now, now - timedelta(hours=1))
    with pytest.raises(InputError, match="has no 'predictions' table"):
        sources.read_log(f"sqlite:///{tmp_path / 'other.db'}", None, None)
