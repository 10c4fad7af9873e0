"""Writing scored chunks, progress lines, and the pandas engine: a thread pool over streamed chunks."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from src.batch.chunk import BatchJob, ChunkResult, Counts, score_chunk
from src.batch.inputs import InputFile, read_chunks
from src.config import BatchSettings

log = logging.getLogger(__name__)


def default_rejects(output: str) -> str:
    """``scored.parquet`` -> ``scored.rejects.parquet`` beside it (the same for folders and s3:// URLs)."""
    stem = output[: -len(".parquet")] if output.endswith(".parquet") else output
    return f"{stem}.rejects.parquet"


def _codec(compression: str) -> str | None:
    return None if compression == "none" else compression


# No Arrow schema in the files: scored chunks carry dictionary-encoded text columns (BatchJob.table_schema),
# and without a stored schema every reader sees those columns as plain text, as output_schema says.
WRITE_OPTIONS = {"store_schema": False}


def _write_table(table: pa.Table, url: str, compression: str, dictionary: list[str] | bool = True,
                 statistics: list[str] | bool = True) -> None:
    with fsspec.open(url, "wb") as fh:
        pq.write_table(table, fh, compression=_codec(compression), use_dictionary=dictionary,
                       write_statistics=statistics, **WRITE_OPTIONS)


def remove_result(url: str) -> None:
    """Remove an earlier result at ``url`` (file or part folder), so no stale part survives a rerun."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


PARTIAL = ".partial"


def partial_url(url: str) -> str:
    """Where a result is written until it is whole: beside it, under a name no ``*.parquet`` glob matches."""
    return url.rstrip("/") + PARTIAL


def publish(partial: str, final: str) -> None:
    """Put a whole result (file or part folder) in place of any earlier one: one rename on local disk; in an
    object store (s3://), which has no folders to rename, a part folder's files are moved one by one."""
    fs, source = fsspec.core.url_to_fs(partial)
    target = fsspec.core.url_to_fs(final)[1]
    folder = fs.isdir(source)
    if folder or fs.isdir(target):  # a folder is not replaced by a rename: clear it first
        remove_result(final)
    if isinstance(fs, LocalFileSystem) or not folder:
        fs.mv(source, target)  # a file replaces an earlier one at once: a reader sees the old or the new
        return
    for path in fs.find(source):
        fs.mv(path, target + path[len(source):])
    remove_result(partial)


class Progress:
    """A log line every ``every`` input rows with the running rate, so a long run shows it is alive;
    ``report`` (e.g. the upload page's job) hears the running row count after every chunk."""

    def __init__(self, every: int, report: Callable[[int], None] | None = None) -> None:
        self.every = every
        self.report = report
        self.rows = 0
        self.next = every
        self.started = time.perf_counter()

    def update(self, rows: int) -> None:
        self.rows += rows
        if self.report is not None:
            self.report(self.rows)
        if self.rows >= self.next:
            elapsed = time.perf_counter() - self.started
            log.info("%s rows read (%s rows/s)", f"{self.rows:,}", f"{self.rows / max(elapsed, 1e-9):,.0f}")
            while self.next <= self.rows:
                self.next += self.every


def run_pandas(files: list[InputFile], job: BatchJob, output: str, rejects: str, batch: BatchSettings,
               chunk_rows: int, report: Callable[[int], None] | None = None) -> Counts:
    """Stream every file chunk by chunk through :func:`score_chunk` into two incremental ParquetWriters.

    ``batch.num_threads`` chunks are scored at once in a thread pool (LightGBM releases the GIL
    and each call uses one thread): on 2 cores that beats one call with 2 OpenMP threads, whose
    threads wait on each other. Results are written in input order, and at most two chunks per
    thread are in flight, so memory stays bounded.
    """
    counts = Counts()
    progress = Progress(batch.log_every_rows, report)
    threads = batch.num_threads or os.cpu_count() or 1
    for url in (output, rejects):
        remove_result(url)
    with fsspec.open(output, "wb") as out_fh, fsspec.open(rejects, "wb") as rej_fh, \
            pq.ParquetWriter(out_fh, job.table_schema(), compression=_codec(batch.compression),
                             use_dictionary=job.dictionary_columns(), write_statistics=job.statistics_columns(),
                             **WRITE_OPTIONS) as out, \
            pq.ParquetWriter(rej_fh, job.rejects_schema(), compression=_codec(batch.compression),
                             **WRITE_OPTIONS) as rej, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score") as pool:
        pending: deque[Future[ChunkResult]] = deque()

        def write_oldest() -> None:
            result = pending.popleft().result()
            out.write_table(result.scored)
            rej.write_table(result.rejects)
            counts.add(result.counts)
            progress.update(result.counts.rows_in)

        offset = 0
        try:
            for file in files:
                log.info("scoring %s", file.url)
                for raw in read_chunks(file, chunk_rows, batch.csv_block_bytes):
                    pending.append(pool.submit(score_chunk, raw, job, offset))
                    offset += len(raw)
                    while len(pending) > 2 * threads:
                        write_oldest()
            while pending:
                write_oldest()
        except BaseException:  # a failure or Ctrl-C: wait only for the chunks already running
            for future in pending:
                future.cancel()
            raise
    return counts
