"""Batch scoring: a CSV/Parquet file or folder (local or ``s3://``) -> scored Parquet + rejects + summary.

    python -m src.modeling.predict INPUT --output scored.parquet [--reasons] [--include-features]
        [--model-uri URI] [--profile NAME] [--rejects FILE] [--summary FILE.json]
        [--engine pandas|dask] [--scheduler tcp://host:8786]

The service scores one applicant at a time; a lender also scores whole portfolios. This
module does that with the very pieces the service and the pipeline use: the champion is
resolved and loaded as the service loads it (flask_api.model_store), every row is judged
by the validate stage's rules (src.data.schemas: normalise + the pandera schema), the
decision bands and TreeSHAP reasons are the service's (src.modeling.explain.Scorer).

Memory stays flat whatever the input size: the input is read in chunks of
``batch.chunk_rows`` rows (pyarrow's streaming readers), each chunk is validated,
encoded with the fitted preprocessing as a whole and scored with one
``booster.predict`` call, and written to the output with an incremental ParquetWriter.
:func:`score_chunk` is that per-chunk work, a pure function; the pandas engine runs it
in a loop, ``--engine dask`` runs the *same* function over the partitions of a
``dask.dataframe`` on a ``dask.distributed`` cluster (a LocalCluster, or an existing
scheduler), which is how scoring scales out beyond one machine.

A row's fate depends on that row only (the one whole-table rule of the validate
stage, unique ids, is not applied: a stream cannot check it in bounded memory), so
chunk sizes and engines cannot change the result. Counts always reconcile:
rows in = scored + rejected.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from mlflow.exceptions import MlflowException
from pandas._libs.parsers import STR_NA_VALUES

from flask_api.model_store import load_model, resolve_model_uri
from src.common import PipelineError, setup_logging, write_json
from src.config import BatchSettings, ConfigError, Profile, Settings, load_settings, read_params, settings_from_dict
from src.data.schemas import FAILURE_COLUMNS, build_schema, normalise, schema_failures
from src.data.validate import REASON_COLUMN, ROW_COLUMN, combine_failures, reason_texts
from src.modeling.explain import Scorer, top_contributions

if TYPE_CHECKING:  # dask is imported only by the dask engine: ~0.5 s of start-up the pandas engine never needs
    from distributed import Client

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
# Cells pandas.read_csv reads as missing: the validate stage sees the raw file through pandas,
# so the streaming CSV reader (pyarrow) must call exactly these cells missing too.
CSV_NA_VALUES = sorted(STR_NA_VALUES)

COLUMNS_COLUMN = "reject_columns"
ID_INT, ID_STR = "int", "str"


class InputError(PipelineError):
    """The input (file, columns, model, options) cannot be scored: one line, exit code 2."""


# --- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One file to score: its fsspec URL, format and the columns to read (file name -> profile name)."""

    url: str
    format: str  # "csv" | "parquet"
    columns: dict[str, str]


def _format_of(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(CSV_SUFFIXES):
        return "csv"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def discover(source: str) -> tuple[fsspec.AbstractFileSystem, list[tuple[str, str]]]:
    """The files behind ``source`` (a file, or every CSV/Parquet file under a folder, sorted by name)."""
    fs, root = fsspec.core.url_to_fs(source)
    if not fs.exists(root):
        raise InputError(f"{source}: no such file or folder")
    if fs.isdir(root):
        names = sorted(p for p in fs.find(root) if not Path(p).name.startswith((".", "_")))
        found = [(fs.unstrip_protocol(p), fmt) for p in names if (fmt := _format_of(p))]
        if not found:
            raise InputError(f"{source}: the folder holds no CSV or Parquet file "
                             f"({', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)})")
        return fs, found
    fmt = _format_of(root)
    if fmt is None:
        raise InputError(f"{source}: not a CSV or Parquet file (by its name); "
                         f"expected one of {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}")
    return fs, [(fs.unstrip_protocol(root), fmt)]


def column_plan(names: list[str], profile: Profile, source: str) -> dict[str, str]:
    """Input column -> profile column for the id and every feature; a missing feature is an InputError.

    Files may use the profile's snake_case names (e.g. the pipeline's own splits) or the raw
    file's spelling (``LIMIT_BAL``, ``Married/Single``), as ``profile.rename`` maps them.
    Other columns (the target, notes...) are ignored.
    """
    wanted = [c for c in (profile.id_column, *profile.features) if c]
    plan: dict[str, str] = {}
    for col in wanted:
        spellings = [col, *(raw for raw, name in profile.rename.items() if name == col and raw != col)]
        hit = next((s for s in spellings if s in names), None)
        if hit is not None:
            plan[hit] = col
    missing = [c for c in profile.features if c not in plan.values()]
    if missing:
        raw_names = {name: raw for raw, name in profile.rename.items()}
        shown = ", ".join(c if raw_names.get(c, c) == c else f"{c} (or {raw_names[c]})" for c in missing)
        raise InputError(f"{source}: missing required column(s) for profile '{profile.name}': {shown}")
    return plan


def _open(url: str) -> Any:
    """A binary file object for a local path or URL; CSVs are decompressed by their suffix (.gz...)."""
    compression = "infer" if _format_of(url) == "csv" else None
    return fsspec.open(url, "rb", compression=compression).open()


def _csv_reader(handle: Any, url: str, columns: list[str] | None, block_bytes: int) -> pacsv.CSVStreamingReader:
    """A streaming CSV reader; with ``columns``, those columns as text (typing is normalise's job)."""
    typed = {"include_columns": columns, "column_types": dict.fromkeys(columns, pa.string())} if columns else {}
    convert = pacsv.ConvertOptions(null_values=CSV_NA_VALUES, strings_can_be_null=True,
                                   quoted_strings_can_be_null=True, **typed)
    try:
        return pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=block_bytes),
                              convert_options=convert)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{url}: cannot be read as CSV: {exc}") from exc


def inspect_input(url: str, fmt: str, profile: Profile, block_bytes: int) -> tuple[InputFile, str | None]:
    """Plan one file's columns and tell how its ids look: ``"int"``, ``"str"`` or None (no id column).

    The id type comes from the file's schema (Parquet) or from the first CSV block's inferred types.
    """
    try:
        with _open(url) as fh:
            schema = pq.read_schema(fh) if fmt == "parquet" else _csv_reader(fh, url, None, block_bytes).schema
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{url}: cannot be read as {fmt}: {exc}") from exc
    plan = column_plan(list(schema.names), profile, url)
    id_raw = next((raw for raw, col in plan.items() if col == profile.id_column), None)
    id_kind = None
    if id_raw is not None:
        id_type = schema.field(id_raw).type
        numeric = pa.types.is_integer(id_type) or pa.types.is_floating(id_type)
        id_kind = ID_INT if numeric else ID_STR
    return InputFile(url=url, format=fmt, columns=plan), id_kind


def read_chunks(file: InputFile, chunk_rows: int, block_bytes: int) -> Iterator[pd.DataFrame]:
    """Stream a file as DataFrames of at most ``chunk_rows`` rows, columns renamed to the profile's."""
    columns = list(file.columns)
    with _open(file.url) as handle:
        if file.format == "parquet":
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows, columns=columns):
                yield batch.to_pandas().rename(columns=file.columns)
            return
        try:
            for batch in _csv_reader(handle, file.url, columns, block_bytes):
                for start in range(0, batch.num_rows, chunk_rows):
                    yield batch.slice(start, chunk_rows).to_pandas().rename(columns=file.columns)
        except pa.ArrowInvalid as exc:  # a ragged line, bad quoting...
            raise InputError(f"{file.url}: CSV parse error: {exc}") from exc


# --- the per-chunk work --------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchJob:
    """Everything a chunk needs to be scored (pickled once to each Dask worker)."""

    scorer: Scorer
    model_name: str
    model_version: str
    scored_at: pd.Timestamp  # one per run
    id_kind: str | None  # "int"/"str": the profile's id column is in the input; None: ids are row numbers
    model_uri: str = ""
    top_reasons: int = 0  # 0: no reasons
    include_features: bool = False

    @property
    def profile(self) -> Profile:
        return self.scorer.profile

    def output_schema(self) -> pa.Schema:
        """The scored file's columns; fixed per run, so every chunk and part file agrees."""
        fields = [pa.field("id", pa.string() if self.id_kind == ID_STR else pa.int64(), nullable=False),
                  pa.field("probability", pa.float64()), pa.field("decision", pa.string()),
                  pa.field("model_name", pa.string()), pa.field("model_version", pa.string()),
                  pa.field("scored_at", pa.timestamp("us", tz="UTC"))]
        for i in range(1, self.top_reasons + 1):
            fields += [pa.field(f"reason_{i}_feature", pa.string()), pa.field(f"reason_{i}_contribution",
                                                                             pa.float64())]
        if self.include_features:
            for name, spec in self.profile.features.items():
                kind = pa.float64() if not spec.is_categorical else (
                    pa.int64() if spec.value_kind is int else pa.string())
                fields.append(pa.field(name, kind))
        return pa.schema(fields)

    def rejects_schema(self) -> pa.Schema:
        """Input row number, failing columns, reasons, then every input column's raw value as text."""
        raw = [c for c in (self.profile.id_column if self.id_kind else None, *self.profile.features) if c]
        return pa.schema([pa.field(ROW_COLUMN, pa.int64()), pa.field(COLUMNS_COLUMN, pa.string()),
                          pa.field(REASON_COLUMN, pa.string()), *(pa.field(c, pa.string()) for c in raw)])


@dataclass
class Counts:
    """What happened to the rows; adds up over chunks and partitions."""

    rows_in: int = 0
    scored: int = 0
    rejected: int = 0
    decisions: Counter = field(default_factory=Counter)
    rejected_per_reason: Counter = field(default_factory=Counter)

    def add(self, other: Counts) -> None:
        self.rows_in += other.rows_in
        self.scored += other.scored
        self.rejected += other.rejected
        self.decisions.update(other.decisions)
        self.rejected_per_reason.update(other.rejected_per_reason)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "scored": self.scored, "rejected": self.rejected,
                "decisions": dict(sorted(self.decisions.items())),
                "rejected_per_reason": dict(self.rejected_per_reason.most_common())}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        return cls(rows_in=data["rows_in"], scored=data["scored"], rejected=data["rejected"],
                   decisions=Counter(data["decisions"]), rejected_per_reason=Counter(data["rejected_per_reason"]))


@dataclass(frozen=True)
class ChunkResult:
    scored: pa.Table
    rejects: pa.Table
    counts: Counts


def _typed_ids(raw: pd.Series, kind: str) -> tuple[pd.Series, pd.DataFrame]:
    """The id column in its run-wide type; for integer ids, an id that is not a whole number fails its row."""
    no_failures = pd.DataFrame(columns=FAILURE_COLUMNS)
    if kind == ID_STR:
        return raw.astype("string"), no_failures
    if pd.api.types.is_integer_dtype(raw.dtype):
        return raw.astype("Int64"), no_failures
    text = raw if pd.api.types.is_numeric_dtype(raw.dtype) else raw.astype("string").str.strip()
    missing = (text.isna() | (text == "")).to_numpy(bool) if text is not raw else raw.isna().to_numpy(bool)
    number = pd.to_numeric(text.mask(missing), errors="coerce")
    unreadable = number.isna().to_numpy(bool) & ~missing
    if pd.api.types.is_integer_dtype(number.dtype) and not unreadable.any():  # no float round trip
        return number.astype("Int64"), no_failures
    values = number.to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(values) & (np.floor(values) == values)
    bad = ~whole & ~missing
    ids = pd.Series(pd.arrays.IntegerArray(np.where(whole, values, 0).astype("int64"), ~whole), index=raw.index)
    failures = pd.DataFrame({"index": raw.index[bad], "column": raw.name, "check": "not a whole-number id",
                             "value": raw[bad].to_numpy(object)}, columns=FAILURE_COLUMNS)
    return ids, failures


def _encode(scorer: Scorer, frame: pd.DataFrame) -> np.ndarray:
    """The fitted preprocessing on the whole chunk at once, in the booster's column order.

    Row-major (C order): LightGBM walks each row's values, and a column-major matrix (what
    ``DataFrame.to_numpy`` gives) makes its threads fight over cache lines.
    """
    encoded = scorer.pipeline.named_steps["preprocess"].transform(frame[scorer.profile.feature_names])
    return np.ascontiguousarray(encoded[scorer.columns].to_numpy(dtype=np.float64))


def score_chunk(raw: pd.DataFrame, job: BatchJob, first_row: int) -> ChunkResult:
    """Validate, score and explain one chunk whose first row is input row ``first_row`` (0-based).

    ``raw`` has the profile's column names (as read, untyped). Rows failing any per-row rule of
    the validate stage become rejects with every reason; the others are encoded as one matrix
    and scored with one booster call (and one ``pred_contrib`` call with reasons).
    """
    profile = job.profile
    raw = raw.reset_index(drop=True)
    n = len(raw)
    rows = np.arange(first_row, first_row + n, dtype=np.int64)
    typed, type_failures = normalise(raw, profile, with_target=False)
    id_col = profile.id_column if job.id_kind else None
    if id_col:
        typed[id_col], id_failures = _typed_ids(raw[id_col], job.id_kind)
        type_failures = pd.concat([type_failures, id_failures], ignore_index=True) if len(id_failures) \
            else type_failures
    rules = build_schema(profile, with_target=False, unique_ids=False)
    failures = combine_failures(type_failures, schema_failures(typed, rules))

    bad = np.sort(failures["index"].unique()).astype(np.int64)
    keep = np.ones(n, dtype=bool)
    keep[bad] = False
    counts = Counts(rows_in=n, scored=int(keep.sum()), rejected=len(bad),
                    rejected_per_reason=Counter(failures.groupby("reason_key")["index"].nunique().to_dict()))

    rejects_schema = job.rejects_schema()
    reject_data: dict[str, Any] = {ROW_COLUMN: rows[bad]}
    if len(bad):
        named = failures.groupby("index")["column"].agg(lambda c: ", ".join(dict.fromkeys(map(str, c))))
        reject_data[COLUMNS_COLUMN] = named.reindex(bad).to_numpy(object)
        reject_data[REASON_COLUMN] = reason_texts(failures).reindex(bad).to_numpy(object)
    else:
        reject_data[COLUMNS_COLUMN] = reject_data[REASON_COLUMN] = np.array([], dtype=object)
    for name in rejects_schema.names[3:]:
        values = raw[name].iloc[bad].astype("string")
        reject_data[name] = values.to_numpy(object, na_value=None)
    rejects = pa.Table.from_pydict(reject_data, schema=rejects_schema)

    good = typed.loc[keep]
    scorer = job.scorer
    m = len(good)
    if m:
        matrix = _encode(scorer, good)
        proba = scorer.probabilities(matrix)
        decisions = scorer.decisions(proba)
    else:
        matrix, proba, decisions = np.empty((0, len(scorer.columns))), np.empty(0), np.empty(0, dtype=object)
    counts.decisions.update(pd.Series(decisions, dtype=object).value_counts().to_dict())
    schema = job.output_schema()
    arrays: dict[str, pa.Array] = {
        "id": pa.array(rows[keep] if not id_col else good[id_col].to_numpy(
            object if job.id_kind == ID_STR else np.int64), type=schema.field("id").type),
        "probability": pa.array(proba, pa.float64()),
        "decision": pa.array(decisions, pa.string()),
        "model_name": pa.repeat(pa.scalar(job.model_name), m),
        "model_version": pa.repeat(pa.scalar(job.model_version), m),
        "scored_at": pa.repeat(pa.scalar(job.scored_at.to_pydatetime(), pa.timestamp("us", tz="UTC")), m),
    }
    if job.top_reasons:
        contrib = scorer.contributions(matrix) if m else np.empty((0, len(scorer.columns) + 1))
        order = top_contributions(contrib, len(scorer.columns), job.top_reasons)
        names = np.asarray(scorer.columns, dtype=object)
        for i in range(job.top_reasons):
            arrays[f"reason_{i + 1}_feature"] = pa.array(names[order[:, i]], pa.string())
            arrays[f"reason_{i + 1}_contribution"] = pa.array(contrib[np.arange(m), order[:, i]], pa.float64())
    if job.include_features:
        for name in profile.features:
            arrays[name] = pa.Array.from_pandas(good[name]).cast(schema.field(name).type)
    scored = pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)
    return ChunkResult(scored=scored, rejects=rejects, counts=counts)


# --- engines -------------------------------------------------------------------------------------


def default_rejects(output: str) -> str:
    """``scored.parquet`` -> ``scored.rejects.parquet`` beside it (the same for folders and s3:// URLs)."""
    stem = output[: -len(".parquet")] if output.endswith(".parquet") else output
    return f"{stem}.rejects.parquet"


def _codec(compression: str) -> str | None:
    return None if compression == "none" else compression


def _write_table(table: pa.Table, url: str, compression: str) -> None:
    with fsspec.open(url, "wb") as fh:
        pq.write_table(table, fh, compression=_codec(compression))


def _clear(url: str) -> None:
    """Remove an earlier result at ``url`` (file or part folder), so no stale part survives a rerun."""
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


class Progress:
    """A log line every ``every`` input rows with the running rate, so a long run shows it is alive."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.rows = 0
        self.next = every
        self.started = time.perf_counter()

    def update(self, rows: int) -> None:
        self.rows += rows
        if self.rows >= self.next:
            elapsed = time.perf_counter() - self.started
            log.info("%s rows read (%s rows/s)", f"{self.rows:,}", f"{self.rows / max(elapsed, 1e-9):,.0f}")
            while self.next <= self.rows:
                self.next += self.every


def run_pandas(files: list[InputFile], job: BatchJob, output: str, rejects: str, batch: BatchSettings,
               chunk_rows: int) -> Counts:
    """Stream every file chunk by chunk through :func:`score_chunk` into two incremental ParquetWriters.

    ``batch.num_threads`` chunks are scored at once in a thread pool (LightGBM releases the GIL
    and each call uses one thread): on 2 cores that beats one call with 2 OpenMP threads, whose
    threads wait on each other. Results are written in input order, and at most two chunks per
    thread are in flight, so memory stays bounded.
    """
    counts = Counts()
    progress = Progress(batch.log_every_rows)
    threads = batch.num_threads or os.cpu_count() or 1
    for url in (output, rejects):
        _clear(url)
    with fsspec.open(output, "wb") as out_fh, fsspec.open(rejects, "wb") as rej_fh, \
            pq.ParquetWriter(out_fh, job.output_schema(), compression=_codec(batch.compression)) as out, \
            pq.ParquetWriter(rej_fh, job.rejects_schema(), compression=_codec(batch.compression)) as rej, \
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score") as pool:
        pending: deque[Future[ChunkResult]] = deque()

        def write_oldest() -> None:
            result = pending.popleft().result()
            out.write_table(result.scored)
            rej.write_table(result.rejects)
            counts.add(result.counts)
            progress.update(result.counts.rows_in)

        offset = 0
        for file in files:
            log.info("scoring %s", file.url)
            for raw in read_chunks(file, chunk_rows, batch.csv_block_bytes):
                pending.append(pool.submit(score_chunk, raw, job, offset))
                offset += len(raw)
                while len(pending) > 2 * threads:
                    write_oldest()
        while pending:
            write_oldest()
    return counts


def _score_partition(part: pd.DataFrame, job: BatchJob, columns: dict[str, str], offsets: list[int],
                     output: str, rejects: str, compression: str,
                     partition_info: dict[str, Any] | None = None) -> pd.DataFrame:
    """One Dask partition: :func:`score_chunk`, then its part files; returns its counts as one row."""
    number = partition_info["number"] if partition_info else 0
    result = score_chunk(part.rename(columns=columns), job, offsets[number])
    _write_table(result.scored, f"{output}/part-{number:05d}.parquet", compression)
    _write_table(result.rejects, f"{rejects}/part-{number:05d}.parquet", compression)
    return pd.DataFrame({"partition": [number], "counts": [json.dumps(result.counts.as_dict())]})


def read_dask(files: list[InputFile], batch: BatchSettings) -> Any:
    """The input as a ``dask.dataframe`` (one format, one column layout for all files)."""
    import dask.dataframe as dd  # noqa: PLC0415  (see the TYPE_CHECKING import above)
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
        _clear(url)
        fs, path = fsspec.core.url_to_fs(url)
        fs.makedirs(path, exist_ok=True)
    meta = pd.DataFrame({"partition": pd.Series(dtype="int64"), "counts": pd.Series(dtype=object)})
    scored = ddf.map_partitions(_score_partition, dask.delayed(job), files[0].columns, offsets, output, rejects,
                                batch.compression, meta=meta, align_dataframes=False)
    counts = Counts()
    progress = Progress(batch.log_every_rows)
    for _, frame in as_completed(client.compute(scored.to_delayed()), with_results=True):
        part = Counts.from_dict(json.loads(frame["counts"].iloc[0]))
        counts.add(part)
        progress.update(part.rows_in)
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


# --- the whole run -------------------------------------------------------------------------------


def plan_inputs(source: str, profile: Profile, block_bytes: int) -> tuple[list[InputFile], str | None]:
    """Every input file with its column plan, and the run's id kind (None: ids are row numbers)."""
    _, found = discover(source)
    inspected = [inspect_input(url, fmt, profile, block_bytes) for url, fmt in found]
    kinds = {kind for _, kind in inspected}
    if len(kinds) > 1 and None in kinds:
        with_id = [f.url for f, kind in inspected if kind]
        raise InputError(f"some input files have the id column '{profile.id_column}' and some do not "
                         f"(with it: {', '.join(with_id[:3])}); score them separately")
    id_kind = ID_STR if ID_STR in kinds else kinds.pop()
    return [f for f, _ in inspected], id_kind


def score_batch(source: str, output: str, job: BatchJob, batch: BatchSettings, *, rejects: str | None = None,
                engine: str = "pandas", client: Client | None = None, chunk_rows: int | None = None) -> dict[str, Any]:
    """Score every row of ``source`` into ``output`` and ``rejects``; return the run's summary.

    ``job.id_kind`` is taken from the input. The dask engine needs ``client``.
    """
    started = time.perf_counter()
    rejects = rejects or default_rejects(output)
    files, id_kind = plan_inputs(source, job.profile, batch.csv_block_bytes)
    job = replace(job, id_kind=id_kind)
    if engine == "dask":
        counts = run_dask(files, job, output, rejects, batch, client)
    else:
        chunk_rows = chunk_rows or batch.chunk_rows
        if job.top_reasons:  # TreeSHAP dominates: small chunks keep every thread busy
            chunk_rows = min(chunk_rows, batch.reasons_chunk_rows)
        counts = run_pandas(files, job, output, rejects, batch, chunk_rows)
    if counts.rows_in != counts.scored + counts.rejected:  # guarded invariant
        raise PipelineError(f"row counts do not reconcile: {counts.rows_in} != {counts.scored} + {counts.rejected}")
    seconds = time.perf_counter() - started
    return {
        "input": source, "files": len(files), "engine": engine, "profile": job.profile.name,
        "model": {"name": job.model_name, "version": job.model_version, "uri": job.model_uri},
        "scored_at": job.scored_at.isoformat(), "output": output, "rejects": rejects,
        "id": f"column {job.profile.id_column}" if id_kind else "input row number",
        **counts.as_dict(),
        "reject_share": round(counts.rejected / counts.rows_in, 6) if counts.rows_in else 0.0,
        "reasons": job.top_reasons, "seconds": round(seconds, 3),
        "rows_per_second": round(counts.rows_in / seconds) if seconds > 0 else None,
    }


def load_job(settings: Settings, model_uri: str | None, *, top_reasons: int = 0, include_features: bool = False,
             num_threads: int = 1) -> BatchJob:
    """The model the service would serve (or ``model_uri``) as a batch job; ``scored_at`` is now."""
    uri = model_uri or resolve_model_uri(settings)
    try:
        loaded = load_model(uri, settings, compile_trees=False)  # its own LightGBM scorer below
    except (MlflowException, OSError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot load model {uri}: {first} (register one with `dvc repro`, "
                         f"or pass --model-uri)") from exc
    dataset = loaded.meta["dataset"]
    if dataset != settings.dataset:
        raise InputError(f"model {uri} was trained for profile '{dataset}', not '{settings.dataset}' "
                         f"(use --profile {dataset})")
    scorer = Scorer(loaded.scorer.pipeline, loaded.meta, settings.profile, top_reasons=max(top_reasons, 1),
                    refer_margin=settings.serve.refer_margin, num_threads=num_threads)
    return BatchJob(scorer=scorer, model_name=loaded.name, model_version=loaded.version, model_uri=uri,
                    scored_at=pd.Timestamp.now(tz="UTC").floor("us"), id_kind=None,
                    top_reasons=min(top_reasons, len(scorer.columns)), include_features=include_features)


# --- CLI -----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.modeling.predict",
                                     description="Score a CSV/Parquet file or folder (local or s3://) in batch.")
    parser.add_argument("input", help="CSV or Parquet file, or a folder of them; local path or s3:// URL")
    parser.add_argument("--output", required=True, help="scored Parquet file (a folder of parts with --engine dask)")
    parser.add_argument("--rejects", help="rejected rows with reasons (default: <output stem>.rejects.parquet)")
    parser.add_argument("--summary", help="also write the run's counts as JSON here")
    parser.add_argument("--model-uri", help="models:/ URI or exported model folder (default: the profile's "
                                            "champion, as the service resolves it)")
    parser.add_argument("--profile", help="dataset profile (default: params.yaml `dataset`)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--reasons", action="store_true", help="add the top reasons per row (TreeSHAP; slower)")
    parser.add_argument("--top-reasons", type=int, help="reasons per row (default: serve.top_reasons); "
                                                        "implies --reasons")
    parser.add_argument("--include-features", action="store_true",
                        help="also write the validated feature columns (what the drift monitor reads)")
    parser.add_argument("--engine", choices=("pandas", "dask"), default="pandas")
    parser.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786); implies --engine dask")
    parser.add_argument("--chunk-rows", type=int, help="rows per chunk, pandas engine (default: batch.chunk_rows)")
    return parser


def settings_for(params_file: str, profile: str | None) -> Settings:
    """params.yaml's settings, for ``profile`` instead of its ``dataset`` when given."""
    if profile is None:
        return load_settings(params_file)
    path = Path(params_file).resolve()
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root, where params.yaml lives")
    return settings_from_dict({**read_params(path), "dataset": profile}, path.parent)


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_for(args.params, args.profile)
    batch = settings.batch
    engine = "dask" if args.scheduler else args.engine
    top = 0
    if args.reasons or args.top_reasons is not None:
        top = settings.serve.top_reasons if args.top_reasons is None else args.top_reasons
        if top < 1:
            raise InputError(f"--top-reasons must be at least 1, got {top}")
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise InputError(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    # The cluster first: loading an MLflow model puts the model's bundled copy of `src` first on
    # sys.path, and worker processes spawned after that would import it instead of this checkout.
    client = dask_client(batch, args.scheduler) if engine == "dask" else None
    try:
        # One LightGBM thread per call: the pandas engine's thread pool / Dask's workers spread the chunks.
        job = load_job(settings, args.model_uri, top_reasons=top, include_features=args.include_features)
        summary = score_batch(args.input, args.output, job, batch, rejects=args.rejects, engine=engine,
                              client=client, chunk_rows=args.chunk_rows)
    finally:
        if client is not None:
            cluster = client.cluster if not args.scheduler else None
            client.close()
            if cluster is not None:
                cluster.close()
    if args.summary:
        write_summary(args.summary, summary)
    return summary


def write_summary(url: str, summary: dict[str, Any]) -> None:
    """The run's counts as JSON (a local path, e.g. metrics/score_summary.json for DVC, or s3://)."""
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        write_json(Path(path), summary)
        return
    with fsspec.open(url, "w") as fh:
        fh.write(json.dumps(summary, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Parse, score, print the counts; bad input is one line and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (InputError, ConfigError) as exc:
        log.error("%s", exc)
        sys.exit(EXIT_BAD_INPUT)
    except PipelineError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_FAILED)
    line = (f"rows in {summary['rows_in']:,}: scored {summary['scored']:,}, rejected {summary['rejected']:,} "
            f"-> {summary['output']} (rejects: {summary['rejects']}); "
            f"{summary['seconds']:.1f} s, {summary['rows_per_second'] or 0:,} rows/s")
    log.info("%s", line)
    sys.stdout.write(line + "\n")


if __name__ == "__main__":
    setup_logging()
    logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster chatter; our progress lines stay
    main()
