"""Pandera schemas generated from a dataset profile, the normalisation before them, and reject reasons.

Shared by the validate stage, batch scoring and monitoring, so a row the model is
trained on and a row it scores are judged by one rule set and rejected in the same words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_lib
import pyarrow.compute as pc
from pyarrow import types as pa_types

from src.config import FeatureSpec, Profile

FAILURE_COLUMNS = ["index", "column", "check", "value"]
REASON_COLUMN = "reject_reasons"
ROW_COLUMN = "raw_row"


def _format_number(value: float) -> str:
    return f"{value:g}"


def _code(value: object, kind: type) -> object:
    """Turn a category code into the profile's code type (1.0 -> 1, ' RENT ' -> 'RENT')."""
    if kind is int:
        number = float(value)  # raises ValueError/TypeError for non-numbers
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    return str(value).strip()


# A cell Arrow can read for pandas: a plain decimal (no exponent) of at most 15 characters, so at most
# 15 digits. Both readers then give the one correctly rounded float (mantissa and power of ten exact).
_PLAIN_DECIMAL = r"^\s*[+-]?(\d+\.?\d*|\.\d+)\s*$"
_PLAIN_CHARS = 15


def plain_decimals(series: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """For Arrow-backed text (pandas' default ``str``, what the CSV readers give): each cell's float64
    where it is a plain decimal, read by Arrow without a Python string per cell, and the mask of those
    cells. Other cells (blank, ``1e5``, ``-0``, words...) are left to pandas. None for other columns."""
    array = series.array
    if not (isinstance(series.dtype, pd.StringDtype | pd.ArrowDtype) and hasattr(array, "__arrow_array__")):
        return None
    text = array.__arrow_array__()
    if not (pa_types.is_string(text.type) or pa_types.is_large_string(text.type)):
        return None
    try:  # the usual column: Arrow reads every cell, so only its exponents and inf/nan are not plain
        number = pc.cast(text, pa_lib.float64())
        trimmed = text
        plain = pc.and_(pc.less_equal(pc.binary_length(text), _PLAIN_CHARS), pc.is_finite(number))
        if _may_hold_exponents(text):
            for letter in "eE":
                plain = pc.and_(plain, pc.equal(pc.find_substring(text, letter), -1))
    except pa_lib.ArrowInvalid:  # some cell is not a number to Arrow (padded, a word...): cell by cell
        trimmed = pc.ascii_trim_whitespace(text)
        plain = pc.and_(pc.match_substring_regex(text, _PLAIN_DECIMAL),
                        pc.less_equal(pc.utf8_length(trimmed), _PLAIN_CHARS))
        try:
            number = pc.cast(pc.if_else(plain, trimmed, None), pa_lib.float64())
        except pa_lib.ArrowInvalid:  # a shape Arrow does not read after all: pandas reads the column
            return None
    # "-0" is -0.0 to Arrow but 0.0 to pandas when the column holds only whole numbers: pandas decides
    negative_zero = pc.and_(pc.equal(number, 0.0), pc.starts_with(trimmed, "-"))
    fast = pc.fill_null(pc.and_not(plain, negative_zero), False).to_numpy(zero_copy_only=False)
    values = pc.fill_null(number, np.nan).to_numpy(zero_copy_only=False)
    return np.where(fast, values, np.nan), fast


def _may_hold_exponents(text: pa_lib.ChunkedArray) -> bool:
    """False when no cell holds an ``e`` or ``E``: one pass over the raw bytes (a slice's buffer may hold
    its neighbours' too, which can only say yes), a tenth of the cost of asking cell by cell."""
    for chunk in text.chunks:
        data = chunk.buffers()[2]
        if data is not None:
            raw = np.frombuffer(data, dtype=np.uint8)
            if ((raw == ord("e")) | (raw == ord("E"))).any():
                return True
    return False


def _to_float(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Coerce to float64; return it and a mask of cells that held something that is not a number."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype("float64"), pd.Series(False, index=series.index)
    values, bad = _read_numbers(series, _text_to_float)
    return pd.Series(values, index=series.index), pd.Series(bad, index=series.index)


def _read_numbers(series: pd.Series, by_pandas: Callable[[pd.Series], tuple[Any, Any]]) -> tuple[Any, Any]:
    """``by_pandas(series)`` -> (numbers, flags), with the plain decimals of Arrow text read by Arrow and
    ``by_pandas`` asked only about the other cells (flags: False for a plain decimal)."""
    plain = plain_decimals(series)
    if plain is None:
        return by_pandas(series)
    values, fast = plain
    flags = np.zeros(len(series), dtype=bool)
    rest = np.flatnonzero(~fast)
    if len(rest):
        rest_values, rest_flags = by_pandas(series.iloc[rest])
        values[rest], flags[rest] = np.asarray(rest_values, dtype="float64"), np.asarray(rest_flags, dtype=bool)
    return values, flags


def _text_to_float(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """:func:`_to_float` by pandas alone, one Python string per cell."""
    text = series.astype("string").str.strip()
    blank = text.isna() | (text == "")
    coerced = pd.to_numeric(text.mask(blank), errors="coerce").astype("float64")
    return coerced, coerced.isna() & ~blank


def normalise(df: pd.DataFrame, profile: Profile, with_target: bool = True,
              with_protected: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the profile's clean rules and coerce each column to its declared type.

    Returns the typed frame (uncoercible cells set to missing) and one failure
    record per uncoercible cell, so the row can be quarantined with the exact value.
    ``with_protected``: the protected attributes too (the pipeline's tables keep them to
    measure fairness; scoring never asks for them).
    """
    out = df.copy(deep=False)  # every column that changes is replaced, never written in place
    failures: list[dict[str, object]] = []
    for col, rule in profile.clean.items():
        if col in out.columns:
            pattern = rule.compiled()
            out[col] = out[col].map(lambda v, p=pattern, r=rule.replace: p.sub(r, v) if isinstance(v, str) else v)
    columns: dict[str, FeatureSpec | None] = dict(profile.measured_columns if with_protected else profile.features)
    if with_target:
        columns[profile.target_column] = None
    for col, spec in columns.items():
        if col not in out.columns:
            continue
        series = out[col]
        if spec is None or not spec.is_categorical:
            out[col], bad = _to_float(series)
            check = "not a number"
        else:
            out[col], bad = _to_codes(series, spec.value_kind)
            check = "not a valid code"
        if bad.any():
            failures += [{"index": i, "column": col, "check": check, "value": series[i]} for i in series.index[bad]]
    return out, pd.DataFrame(failures, columns=FAILURE_COLUMNS)


# Integer codes are checked in float64; beyond 2**53 floats skip integers, so such values take the
# exact per-value path (which the int codes of any real profile never reach).
_EXACT_FLOAT_INT = 2.0**53


def _is_text(series: pd.Series) -> bool:
    """True when every non-missing cell is a str, so vectorised string methods equal ``str(v).strip()``."""
    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return True
    return series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")


def _stripped(series: pd.Series) -> pd.Series:
    """``str.strip()`` of every cell, by Python's own rule (pyarrow's whitespace set is a little narrower)."""
    return series.astype(pd.StringDtype("python")).str.strip()


def _to_codes(series: pd.Series, kind: type) -> tuple[pd.Series, np.ndarray]:
    """Vectorised :func:`_code` over a column: typed codes (Int64 or string) and a mask of invalid cells.

    Missing and blank cells become missing codes. A cell the fast path cannot settle (e.g. ``True``,
    ``"1_000"``) goes through :func:`_code` itself, so the result equals the per-value rule exactly.
    """
    index = series.index
    if kind is str:
        if _is_text(series):
            text = _stripped(series).astype("string")
        else:
            text = series.map(lambda v: None if pd.isna(v) else str(v).strip()).astype("string")
        return text.mask(text == ""), np.zeros(len(series), dtype=bool)
    if series.dtype == np.int64:  # plain integers (Parquet's usual codes): already exact, none missing
        values = series.to_numpy()
        return pd.Series(pd.arrays.IntegerArray(values, np.zeros(len(values), dtype=bool)), index=index), \
            np.zeros(len(values), dtype=bool)
    if pd.api.types.is_numeric_dtype(series.dtype):
        number = series.to_numpy(dtype="float64", na_value=np.nan)
        missing = np.isnan(number)
        with np.errstate(invalid="ignore"):  # whole numbers too big for float64's exact range: ask _code
            unsure = np.isfinite(number) & (np.floor(number) == number) & (np.abs(number) >= _EXACT_FLOAT_INT)
    else:
        number, missing = _read_numbers(series, _text_numbers)
        unsure = ~missing
    with np.errstate(invalid="ignore"):
        exact = np.isfinite(number) & (np.floor(number) == number) & (np.abs(number) < _EXACT_FLOAT_INT)
    bad = ~missing & ~exact & ~unsure
    values = np.where(exact, number, 0).astype("int64")
    mask = ~exact
    for pos in np.flatnonzero(unsure & ~exact):  # rare: the fast path could not read the value
        try:
            values[pos], mask[pos] = _code(series.iloc[pos], int), False
        except (TypeError, ValueError, OverflowError):
            bad[pos] = True
    return pd.Series(pd.arrays.IntegerArray(values, mask), index=index), bad


def _text_numbers(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The number pandas reads in each cell of a column that is not numeric (NaN where it reads none), and
    the missing cells; one Python object per cell."""
    text = _stripped(series) if _is_text(series) else None
    if text is None:  # mixed Python objects: let the per-value rule decide every cell
        missing = series.map(lambda v: pd.isna(v) or (isinstance(v, str) and not v.strip())).to_numpy(bool)
        return np.full(len(series), np.nan), missing
    missing = (text.isna() | (text == "")).to_numpy(bool)
    number = pd.to_numeric(text.mask(missing), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    # pandas' reader is not correctly rounded beyond 15 digits ("+400000000000000032E-3" reads as a whole
    # number, Python's float() as one 1/16 above): such cells are left to the per-value rule
    number[(text.str.len() > _PLAIN_CHARS).fillna(False).to_numpy(bool)] = np.nan
    return number, missing


def _feature_column(spec: FeatureSpec) -> pa.Column:
    checks: list[pa.Check] = []
    if spec.is_categorical:
        if spec.values is not None:
            checks.append(pa.Check.isin(list(spec.values), error=f"not one of {', '.join(map(str, spec.values))}"))
        else:
            checks.append(pa.Check.str_length(min_value=1, error="empty"))
        dtype = "Int64" if spec.value_kind is int else "string"
    else:
        if spec.min is not None and spec.max is not None:
            checks.append(pa.Check.in_range(spec.min, spec.max,
                                            error=f"outside [{_format_number(spec.min)}, {_format_number(spec.max)}]"))
        elif spec.min is not None:
            checks.append(pa.Check.ge(spec.min, error=f"below {_format_number(spec.min)}"))
        elif spec.max is not None:
            checks.append(pa.Check.le(spec.max, error=f"above {_format_number(spec.max)}"))
        dtype = "float64"
    return pa.Column(dtype, checks=checks, nullable=spec.nullable, required=True)


def build_schema(profile: Profile, with_target: bool = True, unique_ids: bool = True,
                 with_protected: bool = False) -> pa.DataFrameSchema:
    """The pandera schema for normalised rows of this profile.

    ``unique_ids=False`` (batch scoring) keeps every per-row rule but drops the whole-table
    rule that ids are unique: a streamed or partitioned batch cannot check it in bounded
    memory, and a row's fate must not depend on which chunk it landed in.
    """
    specs = profile.measured_columns if with_protected else profile.features
    columns = {name: _feature_column(spec) for name, spec in specs.items()}
    if with_target:
        columns[profile.target_column] = pa.Column(
            "float64", checks=pa.Check.isin([0.0, 1.0], error="not 0 or 1"), nullable=False)
    if profile.id_column:
        columns[profile.id_column] = pa.Column(
            nullable=False, unique=unique_ids, report_duplicates="exclude_first", required=False)
    return pa.DataFrameSchema(columns, strict=False, name=f"{profile.name} applicants")


_CHECK_WORDS = {
    "not_nullable": "missing",
    "field_uniqueness": "duplicate id",
    "column_in_dataframe": "column missing",
}


def schema_failures(df: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Run the schema lazily and return one record per failing cell (index, column, check, value)."""
    try:
        schema.validate(df, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        rows = []
        for case in cases.itertuples(index=False):
            check = str(case.check)
            error = _check_message(schema, case.column, check)
            rows.append({"index": case.index, "column": case.column, "check": error, "value": case.failure_case})
        return pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    return pd.DataFrame(columns=FAILURE_COLUMNS)


def suspect_rows(df: pd.DataFrame, profile: Profile) -> np.ndarray | None:
    """Rows that *might* break a per-row rule of :func:`build_schema`, by plain NumPy comparisons.

    A superset by construction: any missing cell, any number outside its bounds, any code not
    in its list, any empty text. None when a column does not have the dtype :func:`normalise`
    gives (then only the schema itself can judge). Batch scoring runs the pandera schema on the
    suspect rows alone: on clean data that is no rows, and the schema's words stay the only ones.
    """
    suspect = np.zeros(len(df), dtype=bool)
    for name, spec in profile.features.items():
        if name not in df.columns:
            return None
        series = df[name]
        if spec.is_categorical:
            if str(series.dtype) != ("Int64" if spec.value_kind is int else "string"):
                return None
            if spec.values is not None:  # a missing code is not in the list either
                suspect |= ~series.isin(list(spec.values)).to_numpy(bool)
            else:
                suspect |= (series.str.len() < 1).fillna(True).to_numpy(bool)  # empty or missing
        else:
            if series.dtype != np.float64:
                return None
            values = series.to_numpy()
            with np.errstate(invalid="ignore"):
                outside = np.isnan(values)
                if spec.min is not None:
                    outside |= values < spec.min
                if spec.max is not None:
                    outside |= values > spec.max
            suspect |= outside
    if profile.id_column and profile.id_column in df.columns:
        suspect |= df[profile.id_column].isna().to_numpy(bool)
    return suspect


def row_failures(df: pd.DataFrame, profile: Profile, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """:func:`schema_failures` for a schema without whole-table rules, run on the suspect rows only."""
    suspect = suspect_rows(df, profile)
    if suspect is None:
        return schema_failures(df, schema)
    if not suspect.any():
        return pd.DataFrame(columns=FAILURE_COLUMNS)
    return schema_failures(df.loc[suspect], schema)


def _check_message(schema: pa.DataFrameSchema, column: str, check: str) -> str:
    if check in _CHECK_WORDS:
        return _CHECK_WORDS[check]
    if column in schema.columns:
        for chk in schema.columns[column].checks:
            if chk.error and (check == chk.error or check.startswith(chk.name or "")):
                return chk.error
    return re.sub(r"\s+", " ", check)


def _reason(record: pd.Series) -> str:
    value = record["value"]
    value = value.item() if hasattr(value, "item") else value  # np.int64(3) -> 3
    return f"{record['column']}: {record['check']} (value {value!r})"


def combine_failures(type_failures: pd.DataFrame, check_failures: pd.DataFrame) -> pd.DataFrame:
    """One record per failing cell (normalise's first, then the schema's), with its ``reason_key``.

    Shared by the validate stage and batch scoring (src/batch), so a row is rejected there for the same
    reasons, in the same words, as here.
    """
    failures = pd.concat([type_failures, check_failures], ignore_index=True)
    # A cell that could not be typed is also "missing" to the schema: keep the first, truer reason.
    failures = failures.drop_duplicates(["index", "column"], keep="first")
    failures["index"] = failures["index"].astype("int64")
    failures["reason_key"] = failures["column"].astype(str) + ": " + failures["check"].astype(str)
    return failures


def reason_texts(failures: pd.DataFrame) -> pd.Series:
    """Row index -> every reason of that row, joined with "; " (e.g. "age: outside [18, 100] (value 150)")."""
    return failures.assign(text=failures.apply(_reason, axis=1)).groupby("index")["text"].agg("; ".join)
