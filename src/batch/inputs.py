"""Batch inputs: find the files behind a path or ``s3://`` prefix, plan their columns, stream them in chunks.

Files may spell columns as the profile does or as the raw file does (``profile.rename``);
CSVs are read by pyarrow's streaming reader with pandas' own missing-value cells, so a
row reads the same here as in the validate stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pandas._libs.parsers import STR_NA_VALUES

from src.common import PipelineError
from src.config import Profile

CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
# Cells pandas.read_csv reads as missing: the validate stage sees the raw file through pandas,
# so the streaming CSV reader (pyarrow) must call exactly these cells missing too.
CSV_NA_VALUES = sorted(STR_NA_VALUES)

ID_INT, ID_STR = "int", "str"


class InputError(PipelineError):
    """The input (file, columns, model, options) cannot be scored: one line, exit code 2."""


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
    """A binary file object for a local path or URL; CSVs are decompressed by their suffix (.gz...).

    A local Parquet file is memory-mapped by Arrow itself: Arrow then reads it without calling back
    into Python for every column chunk, and decodes straight from the page cache instead of copying
    each column chunk into freshly allocated (and freshly zeroed) memory first.
    """
    fmt = _format_of(url)
    fs, path = fsspec.core.url_to_fs(url)
    if fmt == "parquet" and isinstance(fs, LocalFileSystem):
        return pa.memory_map(path)
    return fsspec.open(url, "rb", compression="infer" if fmt == "csv" else None).open()


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


def _frame(batch: pa.RecordBatch, names: dict[str, str]) -> pd.DataFrame:
    """A batch as a DataFrame under the profile's names: renamed in Arrow (no data copied), one block per
    column (no consolidation copy; each column is converted on its own afterwards anyway)."""
    renamed = batch.rename_columns([names.get(c, c) for c in batch.schema.names])
    return renamed.to_pandas(split_blocks=True, use_threads=False)  # (see read_chunks)


def read_chunks(file: InputFile, chunk_rows: int, block_bytes: int) -> Iterator[pd.DataFrame]:
    """Stream a file as DataFrames of at most ``chunk_rows`` rows, columns renamed to the profile's.

    Parquet is decoded and converted on this thread alone: the engines read here while every core
    scores, so Arrow's own threads only added switching (4 M rows: 8 % more rows/s without them).
    """
    columns = list(file.columns)
    with _open(file.url) as handle:
        if file.format == "parquet":
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=chunk_rows, columns=columns,
                                                             use_threads=False):
                yield _frame(batch, file.columns)
            return
        try:
            for batch in _csv_reader(handle, file.url, columns, block_bytes):
                for start in range(0, batch.num_rows, chunk_rows):
                    yield _frame(batch.slice(start, chunk_rows), file.columns)
        except pa.ArrowInvalid as exc:  # a ragged line, bad quoting...
            raise InputError(f"{file.url}: CSV parse error: {exc}") from exc


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
