"""The daily batch's bookkeeping: score every file that landed in the inbox exactly once, by run date.

A ledger (``<outbox>/_ledger/<key>.json``, one record per input file, on local disk or S3 like
the outputs) says what was scored, when and with what counts. A file is *claimed* for a run
date before it is scored and marked *done* after its outputs are written:

* rerunning a date scores nothing twice (done files are skipped and listed as such);
* a file that lands late (after its day's run) is scored by the next run, under that run's date;
* a run that crashed mid-file leaves a claim: the next run scores that file again into the
  same date folder, overwriting the partial output, so there is one output whatever crashed.

Every file's rows reconcile (rows in = scored + rejected), and so do the run's totals.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from src.batch.chunk import BatchJob
from src.batch.inputs import InputError, discover
from src.batch.run import score_batch
from src.config import BatchSettings

log = logging.getLogger(__name__)

LEDGER = "_ledger"
CLAIMED, DONE = "claimed", "done"


def ledger_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:20]


def read_ledger(outbox: str) -> dict[str, dict[str, Any]]:
    """Every record of the ledger, by input URL."""
    fs, root = fsspec.core.url_to_fs(f"{outbox.rstrip('/')}/{LEDGER}")
    if not fs.exists(root):
        return {}
    records = {}
    for path in sorted(fs.glob(f"{root}/*.json")):
        with fs.open(path, "rb") as fh:
            record = json.loads(fh.read())
        records[record["input"]] = record
    return records


def write_record(outbox: str, record: dict[str, Any]) -> None:
    """One ledger record, whole or not at all (a temporary name, then a rename; one PUT on S3)."""
    fs, root = fsspec.core.url_to_fs(f"{outbox.rstrip('/')}/{LEDGER}")
    fs.makedirs(root, exist_ok=True)
    path = f"{root}/{ledger_key(record['input'])}.json"
    data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)
    else:
        with fs.open(path, "wb") as fh:
            fh.write(data)


def output_name(url: str, inbox: str) -> str:
    """The input's path under the inbox, flattened and whole (``2026/12/a.csv`` -> ``2026__12__a.csv``), so
    two inputs never share an output (a.csv and a.parquet)."""
    _, root = fsspec.core.url_to_fs(inbox)
    _, path = fsspec.core.url_to_fs(url)
    relative = PurePosixPath(path).relative_to(root) if path != root else PurePosixPath(PurePosixPath(path).name)
    return str(relative).replace("/", "__")


@dataclass
class DayResult:
    """What one run did: the files it scored (with counts), the ones already scored before, the totals."""

    run_date: str
    scored: list[dict[str, Any]] = field(default_factory=list)
    already_scored: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows_scored: int = 0
    rows_rejected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"run_date": self.run_date, "files_scored": len(self.scored), "files": self.scored,
                "already_scored": self.already_scored, "rows_in": self.rows_in, "scored": self.rows_scored,
                "rejected": self.rows_rejected}


def pending(inbox: str, outbox: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The inbox's files not yet done, and the ledger (an empty or missing inbox: nothing pending)."""
    try:
        _, found = discover(inbox)
    except InputError as exc:
        log.info("nothing to score: %s", exc)
        found = []
    ledger = read_ledger(outbox)
    return [url for url, _fmt in found if ledger.get(url, {}).get("status") != DONE], ledger


def score_file(url: str, run_date: str, inbox: str, outbox: str, job: BatchJob, batch: BatchSettings,
               ledger: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Claim, score and mark one file done; its ledger record. A file claimed by an earlier run that did not
    finish keeps that run's date, so its output is overwritten, never duplicated."""
    claimed = ledger.get(url)
    day = claimed["run_date"] if claimed and claimed.get("status") == CLAIMED else run_date
    name = output_name(url, inbox)
    folder = f"{outbox.rstrip('/')}/{day}"
    record = {"input": url, "run_date": day, "status": CLAIMED, "output": f"{folder}/{name}.parquet",
              "rejects": f"{folder}/{name}.rejects.parquet",
              "claimed_at": datetime.now(UTC).isoformat(timespec="seconds")}
    write_record(outbox, record)
    fs, path = fsspec.core.url_to_fs(folder)
    fs.makedirs(path, exist_ok=True)
    summary = score_batch(url, record["output"], job, batch, rejects=record["rejects"])
    if summary["rows_in"] != summary["scored"] + summary["rejected"]:
        raise RuntimeError(f"{url}: rows do not reconcile: {summary['rows_in']} != "
                           f"{summary['scored']} + {summary['rejected']}")
    record.update(status=DONE, rows_in=summary["rows_in"], scored=summary["scored"], rejected=summary["rejected"],
                  reject_share=summary["reject_share"], rejected_per_reason=summary["rejected_per_reason"],
                  model={"name": job.model_name, "version": job.model_version},
                  done_at=datetime.now(UTC).isoformat(timespec="seconds"))
    write_record(outbox, record)
    log.info("scored %s: %d rows in, %d scored, %d rejected -> %s", url, summary["rows_in"], summary["scored"],
             summary["rejected"], record["output"])
    return record


def add(result: DayResult, record: dict[str, Any]) -> None:
    result.scored.append(record)
    result.rows_in += record["rows_in"]
    result.rows_scored += record["scored"]
    result.rows_rejected += record["rejected"]


def day_records(outbox: str, run_date: str) -> list[dict[str, Any]]:
    """The files scored under ``run_date`` (done), in input order."""
    return sorted((r for r in read_ledger(outbox).values() if r["run_date"] == run_date and r["status"] == DONE),
                  key=lambda r: r["input"])
