"""The Dask engine: the same chunk function over the partitions of a ``dask.dataframe`` on a cluster.

Dask is imported inside these functions only: ~0.5 s of start-up the pandas engine never needs.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd

from src.batch.chunk import BatchJob, Counts, score_chunk
from src.batch.engine_pandas import Progress, _write_table, remove_result
from src.batch.inputs import InputError, InputFile
from src.common import PipelineError
from src.config import BatchSettings

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


def _score_partition(part: pd.DataFrame, job: BatchJob, columns: dict[str, str], offsets: list[int],
                     output: str, rejects: str, compression: str,
                     partition_info: dict[str, Any] | None = None) -> pd.DataFrame:
    """One Dask partition: :func:`score_chunk`, then its part files; returns its counts as one row."""
    number = partition_info["number"] if partition_info else 0
    result = score_chunk(part.rename(columns=columns), job, offsets[number])
    _write_table(result.scored, f"{output}/part-{number:05d}.parquet", compression, job.dictionary_columns(),
                 job.statistics_columns())
    _write_table(result.rejects, f"{rejects}/part-{number:05d}.parquet", compression)
    return pd.DataFrame({"partition": [number], "counts": [json.dumps(result.counts.as_dict())]})


def read_dask(files: list[InputFile], batch: BatchSettings) -> Any:
    """The input as a ``dask.dataframe`` (one format, one column layout for all files)."""
    import dask.dataframe as dd  # noqa: PLC0415  (see the module docstring)
    formats = {f.format for f in files}
    layouts = {tuple(f.columns.items()) for f in files}
    if len(formats) > 1:
        raise InputError("the dask engine reads one format at a time; the input mixes CSV and Parquet files")
    if len(layouts) > 1:
        raise InputError("the dask engine needs every file to spell its columns the same way; "
                         f"found {len(layouts)} different headers")
    urls = [f.url for f in files]
    columns = list(files[0].columns)
    if formats == {"parquet"}:
        return dd.read_parquet(urls, columns=columns, blocksize=batch.dask_partition_bytes)
    compressed = any(not u.lower().endswith(".csv") for u in urls)
    # Text, and the same cells missing as pandas.read_csv: exactly what the pandas engine's reader gives.
    return dd.read_csv(urls, usecols=columns, dtype=str, keep_default_na=True,
                       blocksize=None if compressed else batch.dask_partition_bytes)


def _partition_lengths(ddf: Any, client: Client) -> list[int]:
    """Rows per partition, reading one column (the row numbers each partition starts at follow)."""
    import dask  # noqa: PLC0415

    return client.compute([dask.delayed(len)(p) for p in ddf[[ddf.columns[0]]].to_delayed()], sync=True)


def run_dask(files: list[InputFile], job: BatchJob, output: str, rejects: str, batch: BatchSettings,
             client: Client) -> Counts:
    """The same :func:`score_chunk` over the partitions of a dask.dataframe, on ``client``'s cluster.

    A first, light pass counts each partition's rows (one column) so every partition knows the
    input row number of its first row; workers then write their part files straight to
    ``output/`` and ``rejects/`` (local or s3://) and return only their counts.
    """
    import dask  # noqa: PLC0415

    # Dask's "tune" step fuses Parquet partitions when only some of a file's columns are read (a
    # file with columns the model does not use: the target, protected attributes): the scoring
    # graph would then see fewer partitions than the row count, and each its first row's number
    # from the wrong offset. Off, partitions are the row groups combined up to dask_partition_bytes.
    with dask.config.set({"optimization.tune.active": False}):
        return _run(files, job, output, rejects, batch, client)


def _run(files: list[InputFile], job: BatchJob, output: str, rejects: str, batch: BatchSettings,
         client: Client) -> Counts:
    import dask  # noqa: PLC0415
    from distributed import as_completed  # noqa: PLC0415

    ddf = read_dask(files, batch)
    lengths = _partition_lengths(ddf, client)
    if job.top_reasons:  # TreeSHAP dominates: split into pieces of at most batch.reasons_chunk_rows rows
        wanted = -(-sum(lengths) // batch.reasons_chunk_rows)
        if wanted > ddf.npartitions:
            ddf = ddf.repartition(npartitions=wanted)
            lengths = _partition_lengths(ddf, client)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
    log.info("%d partitions, %s rows, on %s", len(lengths), f"{sum(lengths):,}", client.scheduler.address)
    for url in (output, rejects):
        remove_result(url)
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path, exist_ok=True)
    meta = pd.DataFrame({"partition": pd.Series(dtype="int64"), "counts": pd.Series(dtype=object)})
    scored = ddf.map_partitions(_score_partition, dask.delayed(job), files[0].columns, offsets, output, rejects,
                                batch.compression, meta=meta, align_dataframes=False)
    counts = Counts()
    progress = Progress(batch.log_every_rows)
    futures = client.compute(scored.to_delayed())
    try:
        for _, frame in as_completed(futures, with_results=True):
            part = Counts.from_dict(json.loads(frame["counts"].iloc[0]))
            counts.add(part)
            progress.update(part.rows_in)
    except BaseException:  # no partition starts after a failure (one already running finishes its part)
        client.cancel(futures)
        raise
    if counts.rows_in != sum(lengths):
        raise PipelineError(f"partitions held {sum(lengths)} rows but {counts.rows_in} were scored or rejected")
    return counts


def dask_client(batch: BatchSettings, scheduler: str | None) -> Client:
    """A client on ``scheduler`` (tcp://host:port), else on a new LocalCluster from ``batch.dask_*``."""
    from distributed import Client, LocalCluster  # noqa: PLC0415

    if scheduler:
        try:
            return Client(scheduler, timeout=30)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
    cluster = LocalCluster(n_workers=batch.dask_workers, threads_per_worker=batch.dask_threads_per_worker,
                           processes=True, dashboard_address=":0")
    return Client(cluster)
