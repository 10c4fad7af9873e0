"""Copies the prediction log's spool into the database: the one writer of the ``predictions`` table.

Under gunicorn it runs as its own process (gunicorn.conf.py starts ``python -m
src.scoring.shipper``), so the workers' CPU and GIL go to requests; without
gunicorn (tests, a development server) the app runs it as a thread. Each pass reads
every segment from where the database says it was left and inserts its complete
lines, recording the new offset in the same transaction (exactly once, whatever
crashes). A database that is down or locked fails the pass, which is retried with
backoff: the rows wait on disk and /metrics shows the backlog. A record the
database refuses for good is set aside in ``<spool>/rejected/`` and counted, so one
bad row never holds up the rest. One shipper per spool (``flock`` on
``<spool>/.shipper.lock``); others stand by. While it keeps up, a pass spends its CPU
in short slices with rests between them (src/scoring/pacer.py), so shipping does not
stall the workers it shares the cores with.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.engine import Engine

from src.common import freeze_survivors
from src.config.env import safe_url
from src.scoring.logdb import (
    Entry,
    FastInsert,
    create_tables,
    first_line,
    make_engine,
    shipped_offsets,
    spool_offsets,
    transient,
)
from src.scoring.pacer import PACE_BACKLOG_BYTES, Pacer
from src.scoring.spool import SUFFIX, try_lock

log = logging.getLogger(__name__)

MAX_READ = 8 << 20            # bytes read from a segment at a time (a 1000-row request is ~0.5 MB)
MAX_ROWS_PER_TRANSACTION = 20_000
MAX_BACKOFF_SECONDS = 5.0
REPEAT_ERROR_SECONDS = 30.0   # while the database stays unreachable, one log line this often
LOCK_FILE = ".shipper.lock"
REJECTED = "rejected"
DRAIN_SECONDS = 30.0          # after a stop, how long a last pass may keep retrying a failing database


class ShipperMetrics:
    """The shipper's own series (in gunicorn's multiprocess directory when it runs beside the workers)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.backlog = Gauge("prediction_log_backlog_bytes", "Spooled decisions not yet in the database (bytes)",
                             multiprocess_mode="mostrecent", registry=reg)
        self.last_success = Gauge("prediction_log_last_ship_timestamp_seconds",
                                  "When the shipper last reached the database", multiprocess_mode="mostrecent",
                                  registry=reg)
        self.shipped = Counter("prediction_log_shipped_rows_total", "Rows copied from the spool to the database",
                               registry=reg)
        self.errors = Counter("prediction_log_ship_errors_total", "Shipping passes that failed (retried)",
                              registry=reg)
        self.rejected = Counter("prediction_log_rejected_rows_total",
                                "Rows the database refused, set aside in the spool's rejected/ folder", registry=reg)


def decode(line: bytes) -> Entry:
    """A spool line (see src.scoring.spool.encode) as the row tuple the INSERT binds.

    Lines spooled before reason codes were recorded have eight fields: their codes are unknown (None);
    before the requester was recorded, nine: who asked is unknown (None).
    """
    fields = orjson.loads(line)
    request_id, created_at, source, model_name, model_version, rows, probabilities, decisions = fields[:8]
    adverse = fields[8] if len(fields) > 8 else [None] * len(rows)
    requested_by = fields[9] if len(fields) > 9 else None
    if not (len(rows) == len(probabilities) == len(decisions) == len(adverse)):
        raise ValueError("rows, probabilities, decisions and reasons differ in length")
    if requested_by is not None and not isinstance(requested_by, str):
        raise ValueError("the requester is not a string")
    return (request_id, source, model_name, model_version, datetime.fromtimestamp(created_at, UTC), rows,
            probabilities, decisions, adverse, requested_by)


class Shipper:
    """One spool directory into one database."""

    def __init__(self, url: str, directory: Path, interval: float = 0.1, registry: CollectorRegistry | None = None,
                 engine: Engine | None = None) -> None:
        self.url = url
        self.directory = Path(directory)
        self.interval = max(0.001, float(interval))
        self.engine = engine if engine is not None else make_engine(url)
        self.insert = FastInsert(self.engine.dialect)
        self.pacer = Pacer()
        self.metrics = ShipperMetrics(registry)
        self.wake = threading.Event()
        self._offsets: dict[str, int] = {}  # segment -> bytes in the database
        self._stale = True  # _offsets must be read from the database first
        self._pass = threading.Lock()
        self._lock_fd = -1

    # -- one pass ------------------------------------------------------------------
    def acquire(self) -> bool:
        """Become the spool's one shipper (False: another process or thread already is)."""
        if self._lock_fd >= 0:
            return True
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if try_lock(fd, exclusive=True):
            self._lock_fd = fd
            return True
        os.close(fd)
        return False

    def release(self) -> None:
        self._stale = True  # another shipper may move the offsets meanwhile
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def ship_once(self, pace: bool = False) -> int:
        """Copy everything spooled so far; the rows shipped. Raises when the database cannot be reached.

        ``pace``: rest between slices of the work (src/scoring/pacer.py) unless more than
        PACE_BACKLOG_BYTES are waiting.
        """
        with self._pass:
            if not self.acquire():
                return 0
            self.pacer.start(pace and self.backlog() <= PACE_BACKLOG_BYTES)
            try:
                if self._stale:  # only this shipper moves the offsets: read them once, then after a failure
                    create_tables(self.engine)  # here, not at start: a database that is down must not stop us
                    with self.engine.connect() as conn:
                        self._offsets = shipped_offsets(conn)
                    self._stale = False
                return sum(self._ship_segment(path) for path in self.segments())
            except BaseException:
                self._stale = True
                raise
            finally:
                self.metrics.backlog.set(self.backlog())

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def backlog(self) -> int:
        """Bytes spooled and not yet in the database (as far as this shipper knows)."""
        total = 0
        for path in self.segments():
            try:
                total += max(0, path.stat().st_size - self._offsets.get(path.name, 0))
            except FileNotFoundError:
                continue
        return total

    def _ship_segment(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            finished = try_lock(fd, exclusive=False)  # before reading: a finished segment gets no more bytes
            size = os.fstat(fd).st_size
            offset = self._offsets.get(path.name, 0)
            rows = 0
            while offset < size:
                data = os.pread(fd, min(MAX_READ, size - offset), offset)
                end = data.rfind(b"\n") + 1
                while end == 0 and offset + len(data) < size:  # one record longer than MAX_READ
                    data += os.pread(fd, min(MAX_READ, size - offset - len(data)), offset + len(data))
                    end = data.rfind(b"\n") + 1
                if end == 0:
                    break  # only a fragment is left: still being written, or cut short by a killed writer
                rows += self._ship_lines(path.name, offset, data[:end])
                offset += end
            if finished:
                if offset < size:  # the writer died mid-write: that request was never answered
                    fragment = os.pread(fd, size - offset, offset)
                    self._reject(path.name, offset, fragment, "an unfinished record (its writer was killed "
                                 "while writing it; the request was not answered)", rows=0)
                self._forget(path)
            return rows
        finally:
            os.close(fd)

    def _ship_lines(self, segment: str, offset: int, data: bytes) -> int:
        """Insert the complete lines of ``data`` (which starts at ``offset``), in transactions of bounded size."""
        batch: list[tuple[bytes, Entry | None, int]] = []  # (line, entry or None if set aside, end offset)
        rows, shipped, position = 0, 0, offset
        for line in data.split(b"\n")[:-1]:
            position += len(line) + 1
            try:
                entry: Entry | None = decode(line)
            except (ValueError, TypeError, OverflowError) as exc:  # a corrupt line: set aside, never blocks
                entry = None
                self._reject(segment, position, line, first_line(exc), rows=0)
            batch.append((line, entry, position))
            rows += len(entry[5]) if entry else 0
            self.pacer.rest(len(entry[5]) if entry else 1)
            if rows >= MAX_ROWS_PER_TRANSACTION:
                shipped += self._commit(segment, batch)
                batch, rows = [], 0
        if batch:
            shipped += self._commit(segment, batch)
        return shipped

    def _commit(self, segment: str, batch: Sequence[tuple[bytes, Entry | None, int]]) -> int:
        """The batch's rows and the segment's new offset in one transaction; a refused record goes aside."""
        entries = [entry for _line, entry, _end in batch if entry is not None]
        try:
            rows = self._insert(segment, entries, batch[-1][2])
        except Exception as exc:
            if transient(exc):
                raise
            if len(batch) > 1:
                log.warning("prediction log: %s; shipping the batch's %d records one by one", first_line(exc),
                            len(batch))
                return sum(self._commit(segment, [record]) for record in batch)
            line, entry, end = batch[0]
            if entry is not None:
                self._reject(segment, end, line, first_line(exc), rows=len(entry[5]))
            return self._insert(segment, [], end)
        self.metrics.shipped.inc(rows)
        return rows

    def _insert(self, segment: str, entries: Sequence[Entry], end: int) -> int:
        with self.engine.begin() as conn:
            rows = self.insert.execute(conn, entries, self.pacer.rest if self.pacer.active else None)
            if segment in self._offsets:
                conn.execute(spool_offsets.update().where(spool_offsets.c.segment == segment)
                             .values(shipped_bytes=end))
            else:
                conn.execute(spool_offsets.insert().values(segment=segment, shipped_bytes=end))
        self._offsets[segment] = end
        return rows

    def _reject(self, segment: str, offset: int, line: bytes, error: str, rows: int) -> None:
        """Keep a record the database will not take (synced to disk) and say so loudly."""
        folder = self.directory / REJECTED
        folder.mkdir(exist_ok=True)
        record = orjson.dumps({"segment": segment, "offset": offset, "error": error,
                               "record": line.decode("utf-8", "replace")}, option=orjson.OPT_APPEND_NEWLINE)
        with open(folder / f"{segment}.jsonl", "ab") as out:
            out.write(record)
            out.flush()
            os.fsync(out.fileno())
        self.metrics.rejected.inc(rows)
        log.error("prediction log: a record of %s (%d row(s)) was set aside in %s: %s", segment, rows, folder,
                  error)

    def _forget(self, path: Path) -> None:
        """A finished, fully shipped segment: delete the file, then its offset (never the other way round)."""
        path.unlink(missing_ok=True)
        with self.engine.begin() as conn:
            conn.execute(spool_offsets.delete().where(spool_offsets.c.segment == path.name))
        self._offsets.pop(path.name, None)

    # -- the loop ------------------------------------------------------------------
    def run(self, stop: threading.Event, parent: int | None = None, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Ship until ``stop`` is set (or ``parent`` exits), then once more so nothing finished stays behind."""
        delay, failing_since, last_report, stopped_at = self.interval, 0.0, 0.0, 0.0
        while True:
            if not stopped_at and (stop.is_set() or (parent is not None and os.getppid() != parent)):
                stopped_at = time.monotonic()
            try:
                self.ship_once(pace=not stopped_at)  # the last pass on the way out: flat out
            except Exception as exc:
                self.metrics.errors.inc()
                now = time.monotonic()
                if not failing_since or now - last_report > REPEAT_ERROR_SECONDS:
                    log.error("prediction log %s unreachable%s: %s; %d byte(s) wait in %s", safe_url(self.url),
                              f" for {now - failing_since:.0f} s" if failing_since else "", first_line(exc),
                              self.backlog(), self.directory)
                    last_report = now
                failing_since = failing_since or now
                delay = min(MAX_BACKOFF_SECONDS, max(self.interval, delay * 2))
                if stopped_at and now - stopped_at > drain_seconds:
                    log.error("prediction log: stopping with %d byte(s) unshipped in %s; the next shipper "
                              "copies them", self.backlog(), self.directory)
                    break
            else:
                if failing_since:
                    log.warning("prediction log %s reachable again after %.0f s", safe_url(self.url),
                                time.monotonic() - failing_since)
                self.metrics.last_success.set(time.time())
                delay, failing_since = self.interval, 0.0
                if stopped_at:
                    break
            if self.wake.wait(delay):
                self.wake.clear()
        self.release()


def main(argv: list[str] | None = None) -> int:
    """``python -m src.scoring.shipper [--parent PID] [--once]``: the shipper for params.yaml's log."""
    from src.config import env, load_settings  # noqa: PLC0415 (keeps the module importable without a project)

    parser = argparse.ArgumentParser(prog="python -m src.scoring.shipper", description=main.__doc__)
    parser.add_argument("--parent", type=int, help="stop (after a last pass) once this process has exited")
    parser.add_argument("--once", action="store_true", help="one pass, then exit (replay a spool by hand)")
    parser.add_argument("--drain-seconds", type=float, default=DRAIN_SECONDS,
                        help="after SIGTERM, how long to keep retrying a failing database before leaving the "
                             "rest in the spool")
    args = parser.parse_args(argv)
    logging.basicConfig(level=(env.text(env.LOG_LEVEL) or "info").upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    settings = load_settings(env.params_file())
    url, directory = env.database_url(settings), env.spool_dir(settings)
    shipper = Shipper(url, directory, interval=settings.serve.log_ship_seconds)
    if args.once:
        rows = shipper.ship_once()
        log.info("shipped %d row(s) from %s to %s; %d byte(s) left", rows, directory, safe_url(url),
                 shipper.backlog())
        return 0
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()
        shipper.wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("shipping the prediction log spool %s to %s", directory, safe_url(url))
    freeze_survivors()  # the imports and the engine (~55,000 objects): no unpaced full collections
    shipper.run(stop, parent=args.parent, drain_seconds=args.drain_seconds)
    log.info("prediction log shipper stopped (%d byte(s) left in %s)", shipper.backlog(), directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
