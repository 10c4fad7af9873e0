"""Files uploaded through the service's batch page, scored in the background: one folder per job.

A job folder holds the upload, ``job.json`` (owner, state, progress, counts, error) and,
once done, the scored and rejects files as Parquet and CSV. The state lives on disk, not
in one worker's memory, so any gunicorn worker on the host can show a job's progress or
hand out its files; a job whose process has gone (a restart) reads as failed. The scoring
is src.batch's own (``plan_inputs``, ``score_batch``): the page and the CLI are one
implementation. Outputs are written under temporary names and renamed when complete, so
a failed job leaves no half-written file; finished jobs expire after
``serve.uploads.keep_minutes``. Flask-free: the web layer is flask_api/uploads.py.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from src.batch.chunk import BatchJob
from src.batch.inputs import CSV_SUFFIXES, PARQUET_SUFFIXES, InputError, plan_inputs
from src.batch.run import score_batch
from src.common import PipelineError
from src.config import BatchSettings, Profile, UploadSettings

log = logging.getLogger(__name__)

ACTIVE = ("receiving", "queued", "running")
JOB_ID = re.compile(r"[A-Za-z0-9_-]{22}")
OUTPUTS = {("scored", "parquet"), ("scored", "csv"), ("rejects", "parquet"), ("rejects", "csv")}
SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES
STATUS_FILE = "job.json"
HEARTBEAT_SECONDS = 0.5  # job.json is rewritten at most this often while rows are scored


class UploadRefused(Exception):
    """The upload cannot be scored; the message is one sentence for the page (it names the file, not a path)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status the page answers with


def size_words(n: int) -> str:
    """A byte count as people read it: 100000000 -> "100 MB"."""
    return f"{n / 1e6:,.0f} MB" if n >= 1_000_000 else f"{n / 1e3:,.0f} kB" if n >= 1000 else f"{n} bytes"


@dataclass
class UploadJob:
    """One uploaded file's job, as ``job.json`` holds it."""

    id: str
    owner: str
    filename: str  # as uploaded (shown, and the downloads' stem)
    stored: str  # the upload's name in the job folder
    reasons: int  # top reasons per row (0: none; decline and referral codes are always there)
    state: str = "receiving"  # receiving -> queued -> running -> done | failed
    created: float = field(default_factory=time.time)
    ended: float | None = None
    pid: int = field(default_factory=os.getpid)
    rows_total: int | None = None  # None: not known ahead (a compressed CSV)
    rows_done: int = 0
    summary: dict[str, Any] | None = None
    error: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def percent(self) -> int:
        """Rows read so far as a percentage (99 at most until done: a CSV's row count is an estimate)."""
        if self.state == "done":
            return 100
        if not self.rows_total:
            return 0
        return min(99, int(100 * self.rows_done / self.rows_total))

    @property
    def stem(self) -> str:
        name = self.filename
        for suffix in SUFFIXES:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)] or "upload"
        return name

    def download_name(self, kind: str, fmt: str) -> str:
        return f"{self.stem}.{kind}.{fmt}"


def file_format(name: str) -> str | None:
    lower = name.lower()
    return "csv" if lower.endswith(CSV_SUFFIXES) else "parquet" if lower.endswith(PARQUET_SUFFIXES) else None


def count_rows(path: Path, fmt: str) -> int | None:
    """Data rows in the file: Parquet's metadata; for a plain CSV its lines less the header (an estimate
    when quoted cells hold line breaks); None for a compressed CSV."""
    if fmt == "parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            raise UploadRefused(f"cannot be read as Parquet ({exc})") from exc
    if not path.name.lower().endswith(".csv"):
        return None
    lines, last = 0, b"\n"
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"
    return max(lines - 1, 0)


def write_csv(parquet: Path, target: Path) -> None:
    """A Parquet output as CSV, batch by batch; list columns (reason codes) become ``;``-separated text."""
    source = pq.ParquetFile(parquet)
    writer: pacsv.CSVWriter | None = None
    try:
        for batch in source.iter_batches(batch_size=65_536):
            columns = [pc.binary_join(col, "; ") if pa.types.is_list(col.type) else col for col in batch.columns]
            table = pa.Table.from_arrays(columns, names=batch.schema.names)
            if writer is None:
                writer = pacsv.CSVWriter(str(target), table.schema)
            writer.write_table(table)
        if writer is None:  # no rows: the header alone
            empty = source.schema_arrow
            fields = [pa.field(f.name, pa.string()) if pa.types.is_list(f.type) else f for f in empty]
            pacsv.write_csv(pa.schema(fields).empty_table(), str(target))
    finally:
        if writer is not None:
            writer.close()


class UploadStore:
    """The jobs under ``root``: accept an upload, score it on a bounded pool, report it, expire it."""

    def __init__(self, root: Path, settings: UploadSettings, batch: BatchSettings) -> None:
        self.root = root
        self.settings = settings
        # One LightGBM thread per job: the service's requests keep the cores.
        self.batch = batch.model_copy(update={"num_threads": 1})
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------------------------
    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def get(self, job_id: str) -> UploadJob | None:
        """The job, or None (no such job, a malformed id, or expired); an active job whose process is gone
        reads as failed."""
        if not JOB_ID.fullmatch(job_id):
            return None
        status = self.folder(job_id) / STATUS_FILE
        try:
            job = UploadJob(**json.loads(status.read_text(encoding="utf-8")))
            if job.active and not _alive(job.pid):  # ended when it last wrote its status
                job.state, job.ended = "failed", status.stat().st_mtime
                job.error = "The service restarted while this file was being scored. Please upload it again."
        except (OSError, ValueError, TypeError):
            return None
        return job

    def jobs_of(self, owner: str) -> list[UploadJob]:
        """The owner's jobs still kept, newest first."""
        if not self.root.is_dir():
            return []
        jobs = [job for p in self.root.iterdir() if (job := self.get(p.name)) is not None and job.owner == owner]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def output(self, job: UploadJob, kind: str, fmt: str) -> Path | None:
        """A finished job's output file, or None."""
        if job.state != "done" or (kind, fmt) not in OUTPUTS:
            return None
        path = self.folder(job.id) / f"{kind}.{fmt}"
        return path if path.is_file() else None

    # -- accepting -------------------------------------------------------------------------------------------
    def accept(self, owner: str, filename: str, save: Callable[[Path], None], profile: Profile,
               reasons: int) -> UploadJob:
        """Take an upload: one active job per owner, a CSV or Parquet name, a non-empty file whose columns the
        profile can score. Anything else is UploadRefused and leaves nothing behind."""
        name = Path(filename.replace("\\", "/")).name.strip()
        fmt = file_format(name)
        if not name:
            raise UploadRefused("Choose a CSV or Parquet file to upload.")
        if fmt is None:
            raise UploadRefused(f"{name} is not a CSV or Parquet file: its name must end in "
                                f"{', '.join(SUFFIXES)}.")
        self.sweep()
        with self._owners_locked():
            running = next((j for j in self.jobs_of(owner) if j.active), None)
            if running is not None:
                raise UploadRefused(f"{running.filename} is still being scored; one file at a time. Its page "
                                    f"shows when it is done.", 409)
            job = UploadJob(id=secrets.token_urlsafe(16), owner=owner, filename=name,
                            stored="input" + _suffix(name), reasons=reasons)
            self.folder(job.id).mkdir(parents=True)
            self._save(job)
        try:
            return self._receive(job, save, profile, fmt)
        except BaseException:
            shutil.rmtree(self.folder(job.id), ignore_errors=True)
            raise

    def _receive(self, job: UploadJob, save: Callable[[Path], None], profile: Profile, fmt: str) -> UploadJob:
        path = self.folder(job.id) / job.stored
        save(path)
        size = path.stat().st_size
        if size == 0:
            raise UploadRefused(f"{job.filename} is empty.")
        if size > self.settings.max_bytes:
            raise UploadRefused(f"{job.filename} is larger than the {size_words(self.settings.max_bytes)} limit.", 413)
        try:
            job.rows_total = count_rows(path, fmt)
            plan_inputs(str(path), profile, self.batch.csv_block_bytes)
        except UploadRefused as exc:
            raise UploadRefused(f"{job.filename} {exc}.") from exc
        except InputError as exc:
            raise UploadRefused(_named(str(exc), path, job.filename)) from exc
        if job.rows_total == 0:
            raise UploadRefused(f"{job.filename} has no rows to score (a header only).")
        job.state = "queued"
        self._save(job)
        log.info("upload %s from %s: %s (%s rows, %s bytes)", job.id, job.owner, job.filename,
                 "?" if job.rows_total is None else f"{job.rows_total:,}", f"{size:,}")
        return job

    # -- running ---------------------------------------------------------------------------------------------
    def start(self, job: UploadJob, batch_job: BatchJob) -> None:
        """Score ``job`` on this process's pool (``serve.uploads.jobs`` at once; the rest wait as queued)."""
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():  # (a pool never crosses a fork)
                self._pool = ThreadPoolExecutor(max_workers=self.settings.jobs, thread_name_prefix="upload")
                self._pool_pid = os.getpid()
            self._pool.submit(self.run, job, batch_job)

    def run(self, job: UploadJob, batch_job: BatchJob) -> UploadJob:
        """Score the upload into temporary files, convert them to CSV, then rename all four into place."""
        folder = self.folder(job.id)
        job.state, job.pid = "running", os.getpid()
        self._save(job)
        partial = {key: folder / f"{key[0]}.partial.{key[1]}" for key in OUTPUTS}
        last = [0.0]

        def report(rows: int) -> None:
            job.rows_done = rows
            if time.monotonic() - last[0] >= HEARTBEAT_SECONDS:
                last[0] = time.monotonic()
                self._save(job)

        started = time.perf_counter()
        try:
            summary = score_batch(str(folder / job.stored), str(partial["scored", "parquet"]), batch_job,
                                  self.batch, rejects=str(partial["rejects", "parquet"]), report=report)
            for kind in ("scored", "rejects"):
                write_csv(partial[kind, "parquet"], partial[kind, "csv"])
            for (kind, fmt), path in partial.items():
                path.replace(folder / f"{kind}.{fmt}")
            job.summary = {key: summary[key] for key in ("rows_in", "scored", "rejected", "decisions",
                                                         "rejected_per_reason", "reject_share", "model", "seconds")}
            job.rows_done, job.state = summary["rows_in"], "done"
            log.info("upload %s scored: %s rows in %.1f s (%s rejected) by %s v%s", job.id,
                     f"{summary['rows_in']:,}", time.perf_counter() - started, f"{summary['rejected']:,}",
                     batch_job.model_name, batch_job.model_version)
        except PipelineError as exc:
            job.state, job.error = "failed", _named(str(exc), folder / job.stored, job.filename)
            log.warning("upload %s failed: %s", job.id, job.error)
        except Exception:
            job.state, job.error = "failed", "Scoring stopped on an unexpected error (logged for the operators)."
            log.exception("upload %s failed", job.id)
        finally:
            for path in partial.values():
                path.unlink(missing_ok=True)
            (folder / job.stored).unlink(missing_ok=True)  # the outputs carry what a reviewer needs
            job.ended = time.time()
            self._save(job)
        return job

    # -- housekeeping ----------------------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> int:
        """Delete jobs that ended more than ``keep_minutes`` ago (and folders a crash left without a status)."""
        if not self.root.is_dir():
            return 0
        now = time.time() if now is None else now
        keep = self.settings.keep_minutes * 60
        removed = 0
        for path in self.root.iterdir():
            if not JOB_ID.fullmatch(path.name):
                continue
            job = self.get(path.name)
            ended = (job.ended or now) if job is not None else path.stat().st_mtime
            if (job is None or not job.active) and now - ended > keep:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        if removed:
            log.info("removed %d expired upload job(s)", removed)
        return removed

    def _save(self, job: UploadJob) -> None:
        """job.json, written whole and renamed, so a reader never sees half of it."""
        path = self.folder(job.id) / STATUS_FILE
        tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}.{threading.get_ident()}")
        tmp.write_text(json.dumps(asdict(job)), encoding="utf-8")
        tmp.replace(path)

    @contextmanager
    def _owners_locked(self) -> Iterator[None]:
        """One process at a time checks an owner's jobs and starts one (gunicorn workers share the folder)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _suffix(name: str) -> str:
    lower = name.lower()
    return next(s for s in sorted(SUFFIXES, key=len, reverse=True) if lower.endswith(s))


def _named(message: str, path: Path, filename: str) -> str:
    """An error about the stored upload, told about the file the user chose (no server paths)."""
    for spelling in (f"file://{path}", str(path)):
        message = message.replace(spelling, filename)
    return message


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
