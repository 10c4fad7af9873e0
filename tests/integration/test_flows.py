"""The Prefect flows, run end to end under Prefect's test harness (a throw-away local API, no network).

The daily batch over three simulated days: each file scored exactly once, a rerun scores
nothing twice, a file that lands late is scored by the next run, a file whose run crashed
after claiming it is scored again into its claimed day (one output), counts reconcile. The
monitor flow stays quiet on the model's own (unshifted) test split and flags and notifies
the shifted one; a failing flow tells the webhook; the schedules are the ones in params.yaml.
Real model (the session's trained project), real files; applicants are real test-split rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from src.config import ConfigError, load_settings
from src.flows import daily
from tests.conftest import ROOT, TrainedProject, load_params, plain_rows
from tests.integration.conftest import tool_env
from tests.integration.test_drift_drill import SHIFTED, population_shift
from tests.net import free_port
from tests.webhook import Receiver


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness  # noqa: PLC0415

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def project(trained_project: TrainedProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            harness: None) -> Path:
    """A project folder: params.yaml (inbox, outbox, outcomes here; no retries), the trained project's splits
    (the drift reference) and its exported champion as the model every flow scores with."""
    params = load_params()
    params["dataset"] = "taiwan_credit"
    params["flows"].update({"inbox": "inbox", "outbox": "daily", "outcomes": None, "task_retries": 0})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    shutil.copytree(trained_project.settings.paths.processed, tmp_path / "data" / "processed")
    (tmp_path / "inbox").mkdir()
    monkeypatch.setenv("MODEL_URI", str(trained_project.model_dir))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'predictions.db'}")  # no log yet: skipped
    return tmp_path


def applicants(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / "data" / "processed" / "test.parquet").reset_index(drop=True)


def land(project: Path, name: str, rows: pd.DataFrame) -> str:
    path = project / "inbox" / name
    if name.endswith(".csv"):
        rows.to_csv(path, index=False)
    else:
        rows.to_parquet(path)
    return f"file://{path}"


def test_the_daily_batch_scores_every_file_exactly_once_over_three_days(project: Path, webhook: Receiver) -> None:
    from src.flows.flows import daily_batch  # noqa: PLC0415

    params = str(project / "params.yaml")
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["notify"]["batch_reject_share"] = 0.02  # c.csv below rejects 1 of its 41 rows
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    rows = applicants(project)
    defect = rows.iloc[[200]].assign(pay_0=15)  # outside [-2, 9]: rejected, with its reason
    a = land(project, "a.csv", rows.iloc[:100].drop(columns=["default"]))
    b = land(project, "b.parquet", rows.iloc[100:200])

    # day 1: both files
    day1 = daily_batch(run_date="2026-12-01", params=params, monitor_after=False)
    assert day1["files_scored"] == 2 and day1["rows_in"] == day1["scored"] == 200 and day1["rejected"] == 0
    assert [f["input"] for f in day1["files"]] == [a, b]
    # day 1 again: nothing twice
    again = daily_batch(run_date="2026-12-01", params=params, monitor_after=False)
    assert again["files_scored"] == 0 and again["already_scored"] == [a, b]

    # after day 1: a file lands late, another with a defect, and a run that crashed after claiming a file
    late = land(project, "late-2026-12-01.csv", rows.iloc[200:260].drop(columns=["default"]))
    c = land(project, "c.csv", pd.concat([rows.iloc[260:300], defect]).drop(columns=["default"]))
    d = land(project, "d.csv", rows.iloc[300:330].drop(columns=["default"]))
    outbox = str(project / "daily")
    daily.write_record(outbox, {"input": d, "run_date": "2026-12-01", "status": daily.CLAIMED,
                                "output": f"{outbox}/2026-12-01/d.csv.parquet"})
    (project / "daily" / "2026-12-01" / "d.csv.parquet").write_bytes(b"half a parquet file")

    day2 = daily_batch(run_date="2026-12-02", params=params, monitor_after=False)
    assert sorted(f["input"] for f in day2["files"]) == sorted([late, c, d])
    by_input = {f["input"]: f for f in day2["files"]}
    assert by_input[late]["run_date"] == by_input[c]["run_date"] == "2026-12-02"
    assert by_input[d]["run_date"] == "2026-12-01"  # its claimed day: the partial output is replaced
    assert by_input[c]["rejected"] == 1 and by_input[c]["scored"] == 40
    assert day2["rows_in"] == 60 + 41 + 30 == day2["scored"] + day2["rejected"]
    [rejects] = webhook.events("batch_rejects")  # the one file over notify.batch_reject_share
    assert rejects["title"] == f"Batch rejected 2.4% of {c}" and "pay_0" in rejects["text"]
    assert rejects["where"] == [by_input[c]["rejects"], by_input[c]["output"]]

    day3 = daily_batch(run_date="2026-12-03", params=params, monitor_after=False)
    assert day3["files_scored"] == 0 and day3["rows_in"] == 0

    # the record: every file done once, its output readable with exactly its scored rows, nothing else written
    ledger = daily.read_ledger(outbox)
    assert set(ledger) == {a, b, late, c, d} and all(r["status"] == daily.DONE for r in ledger.values())
    assert sum(r["rows_in"] for r in ledger.values()) == 331
    assert sum(r["scored"] + r["rejected"] for r in ledger.values()) == 331
    for record in ledger.values():
        assert pq.read_metadata(record["output"]).num_rows == record["scored"]
        assert pq.read_metadata(record["rejects"]).num_rows == record["rejected"]
    outputs = {str(p) for p in (project / "daily").glob("2026-*/*.parquet")}
    assert outputs == {r["output"] for r in ledger.values()} | {r["rejects"] for r in ledger.values()}


def test_monitor_after_the_batch_is_quiet_on_the_test_split_and_flags_a_shift(project: Path,
                                                                               webhook: Receiver) -> None:
    from src.flows.flows import daily_batch  # noqa: PLC0415

    params = str(project / "params.yaml")
    rows = applicants(project)
    outcomes = project / "outcomes.csv"
    # SYNTHETIC group labels (sex, held apart from the application as lenders keep it): the riskiest third of
    # the applicants are "female", so that group's approval rate falls under four fifths of the other's
    risky = rows["pay_0"].rank(method="first") > len(rows) * 2 / 3
    rows.assign(sex=risky.map({True: 2, False: 1}))[["id", "default", "sex"]].to_csv(outcomes, index=False)
    settings_file = project / "params.yaml"
    raw = yaml.safe_load(settings_file.read_text())
    raw["flows"]["outcomes"] = "outcomes.csv"
    settings_file.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")

    land(project, "quiet.csv", rows.drop(columns=["default"]))
    quiet = daily_batch(run_date="2026-12-04", params=params)
    monitor = quiet["monitor"]
    assert monitor["batch_drift"]["rows"] == len(rows) and monitor["batch_drift"]["flag"] is False
    assert monitor["log_drift"] is None  # nothing served: the log window is skipped
    assert monitor["performance"]["matched"] == len(rows) and monitor["performance"]["roc_auc"] > 0.65
    assert webhook.events("drift_flagged") == []
    [breach] = monitor["performance"]["fairness_breaches"]
    assert breach["column"] == "sex" and breach["group"] == "female" and breach["approval_ratio"] < 0.8
    [fairness] = webhook.events("fairness_floor")
    assert "sex = female" in fairness["text"] and fairness["details"]["floor"] == 0.8
    metrics = project / "metrics"
    assert json.loads((metrics / "drift.json").read_text())["flag"] is False
    assert json.loads((metrics / "performance.json").read_text())["counts"]["matched"] == len(rows)

    shifted_rows = population_shift(rows).assign(id=rows["id"] + 10**6)  # other applicants, no outcomes yet
    land(project, "shifted.csv", shifted_rows.drop(columns=["default"]))
    shifted = daily_batch(run_date="2026-12-05", params=params)["monitor"]["batch_drift"]
    assert shifted["flag"] is True and set(shifted["drifted_features"]) == SHIFTED
    [event] = webhook.events("drift_flagged")
    assert "2026-12-05 batch" in event["text"] and set(event["details"]["drifted_features"]) == SHIFTED
    day_report = json.loads((project / "daily" / "2026-12-05" / "drift.json").read_text())
    assert day_report["drifted_features"] == shifted["drifted_features"]


def test_a_failing_flow_tells_the_webhook(project: Path, webhook: Receiver) -> None:
    from src.flows.flows import daily_batch  # noqa: PLC0415

    (project / "inbox" / "broken.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(Exception, match=r"broken\.parquet"):
        daily_batch(run_date="2026-12-06", params=str(project / "params.yaml"), monitor_after=False)
    [event] = webhook.events("flow_failed")
    assert event["title"] == "Flow daily-batch failed" and event["severity"] == "critical"
    assert "broken.parquet" in event["text"] and event["details"]["parameters"]["run_date"] == "2026-12-06"


def test_the_schedules_live_in_code_as_params_yaml_sets_them(project: Path) -> None:
    from src.flows.__main__ import main, schedules  # noqa: PLC0415

    settings = load_settings(project / "params.yaml")
    listed = {s["deployment"]: s for s in schedules(str(project / "params.yaml"))}
    assert listed["daily-batch"]["schedules"] == [{"cron": settings.flows.batch_cron, "timezone": "UTC"}]
    assert listed["weekly-retrain"]["schedules"] == [{"cron": settings.flows.retrain_cron, "timezone": "UTC"}]
    assert listed["monitor"]["schedules"] == []  # it runs after each daily batch, or on demand
    assert (settings.flows.batch_cron, settings.flows.retrain_cron) == ("0 2 * * *", "0 3 * * 1")
    assert main(["--params", str(project / "params.yaml"), "run", "monitor", "--date", "12/04/2026"]) == 2
    from src.flows.flows import day_of  # noqa: PLC0415  (a deployment's parameter is checked the same way)

    with pytest.raises(ConfigError, match="run_date must be YYYY-MM-DD, got '2026-13-01'"):
        day_of("2026-13-01")
    assert day_of("2026-12-04") == "2026-12-04" and len(day_of(None)) == 10


def test_make_flows_serves_the_scheduled_deployments_on_a_local_server(tmp_path: Path) -> None:
    """`make flows`: a local Prefect server on SQLite (a free port, PREFECT_HOME here) with the three deployments
    registered on their schedules; SIGTERM stops both the runner and the server."""
    port = free_port()
    env = {**tool_env(), "PREFECT_HOME": str(tmp_path / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "src.flows", "serve", "--with-server", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/deployments/filter"
    found: dict[str, list] = {}
    try:
        deadline = time.monotonic() + 150
        while len(found) < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            try:
                resp = requests.post(url, json={}, timeout=5)
                found = {d["name"]: [s["schedule"].get("cron") for s in d.get("schedules", [])] for d in resp.json()}
            except (requests.RequestException, ValueError, TypeError):
                pass
            time.sleep(1)
        assert found == {"daily-batch": ["0 2 * * *"], "weekly-retrain": ["0 3 * * 1"], "monitor": []}, \
            log_path.read_text()[-3000:]
        assert (tmp_path / ".prefect").is_dir()  # the server's SQLite database lives under PREFECT_HOME
    finally:
        proc.send_signal(signal.SIGTERM)  # the runner pauses its deployments, then stops the server it started
        try:
            proc.wait(60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode is not None
    with pytest.raises(requests.RequestException):
        requests.post(url, json={}, timeout=2)


def test_monitor_checks_the_prediction_log_window_of_its_day(project: Path, trained_project: TrainedProject) -> None:
    """Decisions the service logged today are compared with the reference too (metrics/drift_log.json)."""
    from src.flows.flows import monitor, today  # noqa: PLC0415
    from src.scoring.model_store import load_model as load_served  # noqa: PLC0415
    from src.scoring.predlog import PredictionLog, new_request_id  # noqa: PLC0415

    settings = trained_project.settings
    served = load_served(str(trained_project.model_dir), settings)
    rows = plain_rows(applicants(project), settings.profile)
    log = PredictionLog(f"sqlite:///{project / 'predictions.db'}", project / "spool")
    for start in range(0, len(rows), 50):
        batch = rows[start:start + 50]
        log.submit(new_request_id(), "api", served.name, served.version, batch, served.scorer.score(batch))
    assert log.flush()
    log.dispose()

    result = monitor(run_date=today(), params=str(project / "params.yaml"))
    assert result["batch_drift"] is None  # no batch that day
    assert result["log_drift"]["rows"] == len(rows) and result["log_drift"]["flag"] is False
    written = json.loads((project / "metrics" / "drift_log.json").read_text())
    assert written["n_batch"] == len(rows) and written["batch"]["scores_from"] == "batch"


def test_the_daily_batch_reads_and_records_on_s3(project: Path, moto_server: str) -> None:
    """Inbox, outputs and ledger as s3:// prefixes (a real moto S3 server): each file scored once there too."""
    import boto3  # noqa: PLC0415

    from src.flows.flows import daily_batch  # noqa: PLC0415

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lender")
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["flows"].update({"inbox": "s3://lender/inbox", "outbox": "s3://lender/daily"})
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    rows = applicants(project).drop(columns=["default"])
    for name, part in (("north.csv", rows.iloc[:80]), ("south.csv", rows.iloc[80:200])):
        s3.put_object(Bucket="lender", Key=f"inbox/{name}", Body=part.to_csv(index=False).encode())

    first = daily_batch(run_date="2026-12-07", params=str(project / "params.yaml"), monitor_after=False)
    assert first["files_scored"] == 2 and first["rows_in"] == first["scored"] == 200
    again = daily_batch(run_date="2026-12-08", params=str(project / "params.yaml"), monitor_after=False)
    assert again["files_scored"] == 0
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="lender", Prefix="daily/")["Contents"])
    assert [k for k in keys if k.startswith("daily/2026-12-07/")] == [
        "daily/2026-12-07/north.csv.parquet", "daily/2026-12-07/north.csv.rejects.parquet",
        "daily/2026-12-07/south.csv.parquet", "daily/2026-12-07/south.csv.rejects.parquet"]
    assert len([k for k in keys if k.startswith("daily/_ledger/")]) == 2
    ledger = daily.read_ledger("s3://lender/daily")
    assert {r["scored"] for r in ledger.values()} == {80, 120}
    assert all(r["status"] == daily.DONE for r in ledger.values())
