"""The batch upload page (flask_api/uploads.py over src/batch/uploads.py): one implementation with the batch CLI,
one clear message per bad file with nothing left behind, one job per user, owners only, expiry."""

from __future__ import annotations

import html as html_text
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from src.batch.__main__ import main as batch_main
from src.batch.run import job_for
from src.batch.uploads import UploadJob, UploadRefused, UploadStore, count_rows
from src.data.schemas import REASON_COLUMN, ROW_COLUMN
from tests.conftest import TrainedProject
from tests.unit.test_access import (  # noqa: F401  (secured_fixture registers the fixture "secured")
    PASSWORD,
    Secured,
    secured_fixture,
    sign_in,
)
from tests.unit.test_batch import cli_params

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def token(client: Any) -> str:
    return TOKEN.search(client.get("/batch").get_data(as_text=True)).group(1)


def post_file(client: Any, name: str, data: bytes, reasons: bool = False) -> Any:
    form = {"csrf_token": token(client), "file": (io.BytesIO(data), name)}
    if reasons:
        form["reasons"] = "y"
    return client.post("/batch", data=form, content_type="multipart/form-data")


def wait_done(client: Any, location: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = client.get(location)
        html = page.get_data(as_text=True)
        assert page.status_code == 200, html[:300]
        if 'id="job-progress"' not in html:
            assert 'http-equiv="refresh"' not in html
            return html
        assert 'http-equiv="refresh" content="1"' in html and "<progress" in html
        time.sleep(0.1)
    raise AssertionError(f"{location} not done in {timeout} s")


def raw_spelling(frame: pd.DataFrame, trained_project: TrainedProject) -> pd.DataFrame:
    """The profile's columns under the raw file's names (LIMIT_BAL, PAY_0...), as an analyst's export has them."""
    raw_names = {name: raw for raw, name in trained_project.settings.profile.rename.items()}
    return frame.rename(columns=raw_names)


def applicants(trained_project: TrainedProject) -> pd.DataFrame:
    """The real test split without its target, with two SYNTHETIC defects planted (rows 2 and 5)."""
    frame = pd.read_parquet(trained_project.settings.split_table("test")).drop(columns=["default"]).astype(object)
    frame.loc[2, "limit_bal"] = "lots"
    frame.loc[5, "pay_0"] = 15
    return frame


def uploaded_files(secured: Secured) -> list[Path]:
    root = secured.app.extensions["credit_uploads"].root
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock") if root.exists() else []


def test_an_uploaded_csv_is_scored_as_the_batch_cli_scores_it(secured: Secured, trained_project: TrainedProject,
                                                              tmp_path: Path) -> None:
    frame = applicants(trained_project)
    source = tmp_path / "applicants.csv"
    raw_spelling(frame, trained_project).to_csv(source, index=False)
    c = secured.client()
    sign_in(c, "alice", PASSWORD, next_path="/batch")
    page = c.get("/batch").get_data(as_text=True)
    assert 'href="/batch">Score a file</a>' in page and 'enctype="multipart/form-data"' in page

    answer = post_file(c, "Applicants Dec.csv", source.read_bytes(), reasons=True)
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    html = wait_done(c, answer.headers["Location"])

    # the batch CLI, the same input and model
    cli_out = tmp_path / "cli" / "scored.parquet"
    batch_main([str(source), "--output", str(cli_out), "--model-uri", str(trained_project.model_dir),
                "--params", str(cli_params(tmp_path)), "--reasons"])
    expected = pd.read_parquet(cli_out).drop(columns=["scored_at"])
    expected_rejects = pd.read_parquet(cli_out.with_name("scored.rejects.parquet"))

    job_url = answer.headers["Location"]
    got = c.get(f"{job_url}/scored.parquet")
    assert got.status_code == 200 and "Applicants Dec.scored.parquet" in got.headers["Content-Disposition"]
    scored = pd.read_parquet(io.BytesIO(got.data))
    pd.testing.assert_frame_equal(scored.drop(columns=["scored_at"]), expected)
    rejects = pd.read_parquet(io.BytesIO(c.get(f"{job_url}/rejects.parquet").data))
    pd.testing.assert_frame_equal(rejects, expected_rejects)
    assert rejects[ROW_COLUMN].tolist() == [2, 5]
    assert "limit_bal" in rejects.loc[0, REASON_COLUMN] and "pay_0" in rejects.loc[1, REASON_COLUMN]

    # the CSVs hold the same rows; reason codes as "; "-separated text
    as_csv = pd.read_csv(io.BytesIO(c.get(f"{job_url}/scored.csv").data))
    assert as_csv["id"].tolist() == scored["id"].tolist()
    assert as_csv["probability"].round(12).tolist() == scored["probability"].round(12).tolist()
    assert as_csv["decision"].tolist() == scored["decision"].tolist()
    codes = ["; ".join(c) if len(c) else None for c in scored["adverse_action"]]
    assert [None if pd.isna(v) else v for v in as_csv["adverse_action"]] == codes
    assert any(codes) and "reason_4_feature" in as_csv.columns
    assert pd.read_csv(io.BytesIO(c.get(f"{job_url}/rejects.csv").data))[ROW_COLUMN].tolist() == [2, 5]

    # the page's counts are the files'
    def count(name: str) -> int:
        return int(re.search(rf'id="count-{name}">([\d,]+)<', html).group(1).replace(",", ""))

    assert count("rows") == len(frame) and count("scored") == len(scored) and count("rejected") == 2
    for decision in ("approve", "refer", "decline"):
        assert count(decision) == int((scored["decision"] == decision).sum())
    assert 'id="reject-reasons"' in html and 'id="download-scored-csv"' in html
    assert "Applicants Dec.csv" in c.get("/batch").get_data(as_text=True)  # listed under "Your files"
    # only what the job keeps: no upload, no partial file
    names = {p.name for p in uploaded_files(secured)}
    assert names == {"job.json", "scored.parquet", "scored.csv", "rejects.parquet", "rejects.csv"}


@pytest.mark.parametrize(("name", "content", "status", "message"), [
    ("notes.txt", b"id,limit_bal\n1,2\n", 400, "notes.txt is not a CSV or Parquet file"),
    ("empty.csv", b"", 400, "empty.csv is empty."),
    ("header.csv", None, 400, "header.csv has no rows to score (a header only)."),
    ("columns.csv", b"id,limit_bal\n1,20000\n", 400, "columns.csv: missing required column(s) for profile "
                                                     "'taiwan_credit': education (or EDUCATION), pay_0 (or PAY_0)"),
    ("fake.parquet", b"PAR1 not really parquet", 400, "fake.parquet cannot be read as Parquet"),
    ("big.csv", b"x" * 3000, 413, "big.csv is larger than the 2 kB limit."),
])
def test_a_bad_file_gets_one_message_and_leaves_nothing(secured: Secured, trained_project: TrainedProject,
                                                        name: str, content: bytes | None, status: int,
                                                        message: str) -> None:
    store = secured.app.extensions["credit_uploads"]
    store.settings = store.settings.model_copy(update={"max_bytes": 2000})
    if content is None:
        content = (",".join(raw_spelling(applicants(trained_project), trained_project).columns) + "\n").encode()
    c = secured.client()
    sign_in(c, "alice", PASSWORD)
    answer = post_file(c, name, content)
    html = answer.get_data(as_text=True)
    assert answer.status_code == status, html[:400]
    error = re.search(r'id="upload-error">([^<]*)<', html).group(1)
    assert html_text.unescape(error).startswith(message), error
    assert str(store.root) not in html and "Traceback" not in html
    assert uploaded_files(secured) == []


def test_too_large_a_body_is_the_page_with_the_limit(secured: Secured) -> None:
    store = secured.app.extensions["credit_uploads"]
    store.settings = store.settings.model_copy(update={"max_bytes": 1000})
    c = secured.client()
    sign_in(c, "alice", PASSWORD)
    answer = post_file(c, "huge.csv", b"y" * (2 << 20))  # beyond the limit and the form's allowance
    assert answer.status_code == 413
    assert "larger than the 1 kB limit" in answer.get_data(as_text=True)
    assert uploaded_files(secured) == []


def test_one_file_at_a_time_for_its_owner_only(secured: Secured, trained_project: TrainedProject) -> None:
    store = secured.app.extensions["credit_uploads"]
    frame = raw_spelling(applicants(trained_project), trained_project)
    c = secured.client()
    sign_in(c, "alice", PASSWORD)
    started = store.start
    store.start = lambda job, batch_job: None  # SYNTHETIC: the first job stays queued
    first = post_file(c, "one.csv", frame.to_csv(index=False).encode())
    assert first.status_code == 303
    second = post_file(c, "two.csv", frame.to_csv(index=False).encode())
    assert second.status_code == 409 and "one.csv is still being scored; one file at a time" in \
        second.get_data(as_text=True)
    store.start = started
    # someone else's job is not found, nor its files; a page that may not score may not upload
    job_url = first.headers["Location"]
    from src.auth.store import set_user  # noqa: PLC0415

    set_user(secured.file, "bob", PASSWORD, "score")
    bob = secured.client("10.0.0.9")
    sign_in(bob, "bob", PASSWORD)
    assert bob.get(job_url).status_code == 404 and bob.get(f"{job_url}/scored.csv").status_code == 404
    assert post_file(bob, "bob.csv", frame.to_csv(index=False).encode()).status_code == 303  # bob's own turn
    prom = secured.client("10.0.0.4")
    sign_in(prom, "prom", PASSWORD)
    refused = prom.get("/batch")
    assert refused.status_code == 403 and "may not score applicants" in refused.get_data(as_text=True)
    assert secured.client("10.0.0.5").get("/batch").headers["Location"].startswith("/login?next=/batch")


def test_a_job_whose_process_died_reads_failed_and_jobs_expire(secured: Secured, trained_project: TrainedProject,
                                                               tmp_path: Path) -> None:
    store: UploadStore = secured.app.extensions["credit_uploads"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    job = UploadJob(id="A" * 22, owner="user:alice", filename="x.csv", stored="input.csv", reasons=0,
                    state="running", pid=int(dead.stdout))
    store.folder(job.id).mkdir(parents=True)
    (store.folder(job.id) / "job.json").write_text(json.dumps(job.__dict__))
    seen = store.get(job.id)
    assert seen is not None and seen.state == "failed" and "restarted" in seen.error
    assert store.get("../../etc") is None and store.get("A" * 21) is None
    keep = store.settings.keep_minutes * 60
    assert store.sweep(now=time.time() + keep / 2) == 0 and store.get(job.id) is not None
    assert store.sweep(now=time.time() + keep + 5) == 1 and store.get(job.id) is None
    alive = UploadJob(id="B" * 22, owner="user:alice", filename="y.csv", stored="input.csv", reasons=0,
                      state="running", pid=os.getpid())
    store.folder(alive.id).mkdir(parents=True)
    (store.folder(alive.id) / "job.json").write_text(json.dumps(alive.__dict__))
    assert store.sweep(now=time.time() + 10 * keep) == 0 and store.get(alive.id).state == "running"


def test_a_failure_while_scoring_leaves_no_output(secured: Secured, trained_project: TrainedProject,
                                                  tmp_path: Path) -> None:
    """A ragged line far into the file (past the first block read to plan it) fails the job with the
    file's name, and no scored or rejects file survives."""
    store: UploadStore = secured.app.extensions["credit_uploads"]
    store.batch = store.batch.model_copy(update={"csv_block_bytes": 4096, "chunk_rows": 50})
    text = raw_spelling(applicants(trained_project), trained_project).to_csv(index=False)
    lines = text.splitlines()
    lines[len(lines) // 2] += ",1,2,3"
    profile = trained_project.settings.profile.with_inputs(list(store_model(secured).meta["features"]))
    job = store.accept("user:alice", "ragged.csv", lambda p: p.write_text("\n".join(lines) + "\n"), profile, 0)
    done = store.run(job, job_for(store_model(secured)))
    assert done.state == "failed" and done.error.startswith("ragged.csv: CSV parse error"), done.error
    assert str(store.root) not in done.error
    assert {p.name for p in store.folder(job.id).iterdir()} == {"job.json"}
    assert store.output(done, "scored", "csv") is None


def store_model(secured: Secured) -> Any:
    return secured.app.extensions["credit_service"].model()


def test_row_counts_ahead_of_scoring(tmp_path: Path) -> None:
    plain = tmp_path / "a.csv"
    plain.write_bytes(b"a,b\n1,2\n3,4")  # no final line break
    assert count_rows(plain, "csv") == 2
    plain.write_bytes(b"a,b\n1,2\n3,4\n")
    assert count_rows(plain, "csv") == 2
    pd.DataFrame({"a": range(7)}).to_parquet(tmp_path / "b.parquet")
    assert count_rows(tmp_path / "b.parquet", "parquet") == 7
    assert count_rows(tmp_path / "a.csv.gz", "csv") is None
    with pytest.raises(UploadRefused, match="cannot be read as Parquet"):
        count_rows(plain, "parquet")
