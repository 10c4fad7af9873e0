"""The prediction log's spool: every answered decision is appended to a local file before the answer leaves.

A credit decision returned to a client must be on record even if the worker is
killed the next instant (SIGKILL, the OOM killer) or the database is down. A
``write()`` to a local file is in the kernel's page cache once it returns, so it
outlives the process; ``fdatasync`` every ``fsync_seconds`` (group commit, off the
request path; 0 = before every answer) bounds what a power cut could take. The
shipper (:mod:`src.scoring.shipper`) copies the records into the database.

Layout: ``<dir>/<host>-<pid>-<ns>.spool``, one JSON array per request and line. A
writer holds an exclusive ``flock`` on the segment it appends to; a segment the
shipper can lock is finished (rotated, or its writer exited or was killed: the
kernel drops the lock with the process), so it is deleted once shipped.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

SUFFIX = ".spool"
SEGMENT_BYTES = 64 << 20  # a segment is closed (and shipped away) after this many bytes
_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY


def encode(request_id: str, created_at: float, source: str, model_name: str, model_version: str,
           rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], requested_by: str | None = None,
           ) -> bytes:
    """One request as one spool line: ids, time (epoch seconds), inputs, probabilities, decisions, the
    principal reason codes each applicant was given (empty for an approval) and who asked (``key:<id>``,
    ``user:<name>``; None when the service runs open)."""
    return orjson.dumps([request_id, created_at, source, model_name, model_version, rows,
                         [r["probability_of_default"] for r in results], [r["decision"] for r in results],
                         [[a["code"] for a in r.get("adverse_action", ())] for r in results], requested_by],
                        option=_OPTIONS)


def segment_host() -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", socket.gethostname()) or "host"


def try_lock(fd: int, exclusive: bool) -> bool:
    """flock without waiting: True when taken (for a reader: no writer holds the segment any more)."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class SpoolWriter:
    """Appends records to this process's open segment; thread-safe, fork-safe (a child opens its own)."""

    def __init__(self, directory: Path, fsync_seconds: float = 1.0, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = Path(directory)
        self.fsync_seconds = max(0.0, float(fsync_seconds))
        self.segment_bytes = max(1, int(segment_bytes))
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._written = 0  # bytes in the open segment
        self._dirty = False
        self._closed = False
        self.segment: Path | None = None
        self._syncer: threading.Thread | None = None
        self._stop = threading.Event()

    def append(self, record: bytes) -> None:
        """Write one record (a whole line); raises OSError if it could not be written whole."""
        with self._lock:
            if self._closed:
                raise OSError("the prediction log spool is closed")
            if self._fd < 0 or self._pid != os.getpid():
                self._open()
            written = os.write(self._fd, record)
            if written != len(record):  # disk full mid-record: take the fragment back, never leave half a line
                os.ftruncate(self._fd, self._written)
                raise OSError(f"spool {self.segment}: wrote {written} of {len(record)} bytes (disk full?)")
            self._written += written
            if self.fsync_seconds == 0:
                os.fdatasync(self._fd)
            else:
                self._dirty = True
            if self._written >= self.segment_bytes:
                self._close_segment()

    def _open(self) -> None:
        if self._pid != os.getpid() and self._fd >= 0:  # inherited through fork: the parent's, not ours
            os.close(self._fd)
        self._fd = -1
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{segment_host()}-{os.getpid()}-{time.time_ns()}"
        opening = self.directory / f".{name}.opening"  # never listed: locked before it gets its real name
        fd = os.open(opening, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        if not try_lock(fd, exclusive=True):
            os.close(fd)
            raise OSError(f"could not lock new spool segment {opening}")
        self.segment = self.directory / f"{name}{SUFFIX}"
        os.rename(opening, self.segment)
        self._fd, self._pid, self._written, self._dirty = fd, os.getpid(), 0, False
        if self.fsync_seconds and (self._syncer is None or not self._syncer.is_alive()):  # none after a fork
            self._stop.clear()
            self._syncer = threading.Thread(target=self._sync_periodically, name="spool-fsync", daemon=True)
            self._syncer.start()

    def _close_segment(self) -> None:
        """Sync and close the open segment: the lock goes with it, so the shipper may finish it."""
        if self._fd >= 0 and self._pid == os.getpid():
            try:
                os.fdatasync(self._fd)
            finally:
                os.close(self._fd)
        self._fd, self._dirty = -1, False

    def _sync_periodically(self) -> None:
        while not self._stop.wait(self.fsync_seconds):
            self.sync()

    def sync(self) -> None:
        """fdatasync the open segment if anything was appended since the last sync (on a dup: no lock held)."""
        with self._lock:
            if not self._dirty or self._fd < 0 or self._pid != os.getpid():
                return
            self._dirty = False
            fd = os.dup(self._fd)
        try:
            os.fdatasync(fd)
        except OSError as exc:
            log.error("spool fsync failed: %s", exc)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Sync and close; later appends raise. Idempotent."""
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_segment()
