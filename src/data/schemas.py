"""Pandera schemas generated from a dataset profile, plus the normalisation before them.

Shared by the validate stage and (later) every consumer of raw applicant rows,
so a row the model is trained on and a row it scores are judged by one rule set.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pandera.pandas as pa

from src.config import FeatureSpec, Profile

FAILURE_COLUMNS = ["index", "column", "check", "value"]


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


def _to_float(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Coerce to float64; return it and a mask of cells that held something that is not a number."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series.astype("float64"), pd.Series(False, index=series.index)
    text = series.astype("string").str.strip()
    blank = text.isna() | (text == "")
    coerced = pd.to_numeric(text.mask(blank), errors="coerce").astype("float64")
    return coerced, coerced.isna() & ~blank


def normalise(df: pd.DataFrame, profile: Profile, with_target: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the profile's clean rules and coerce each column to its declared type.

    Returns the typed frame (uncoercible cells set to missing) and one failure
    record per uncoercible cell, so the row can be quarantined with the exact value.
    """
    out = df.copy()
    failures: list[dict[str, object]] = []
    for col, rule in profile.clean.items():
        if col in out.columns:
            pattern = rule.compiled()
            out[col] = out[col].map(lambda v, p=pattern, r=rule.replace: p.sub(r, v) if isinstance(v, str) else v)
    columns: dict[str, FeatureSpec | None] = dict(profile.features)
    if with_target:
        columns[profile.target_column] = None
    for col, spec in columns.items():
        if col not in out.columns:
            continue
        series = out[col]
        if spec is None or not spec.is_categorical:
            coerced, bad = _to_float(series)
            out[col] = coerced
            failures += [{"index": i, "column": col, "check": "not a number", "value": series[i]}
                         for i in series.index[bad]]
        else:
            kind = spec.value_kind
            codes: list[object] = []
            for i, value in series.items():
                if pd.isna(value) or (isinstance(value, str) and not value.strip()):
                    codes.append(None)
                    continue
                try:
                    codes.append(_code(value, kind))
                except (TypeError, ValueError):
                    codes.append(None)
                    failures.append({"index": i, "column": col, "check": "not a valid code", "value": value})
            out[col] = pd.Series(codes, index=series.index, dtype="Int64" if kind is int else "string")
    return out, pd.DataFrame(failures, columns=FAILURE_COLUMNS)


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


def build_schema(profile: Profile, with_target: bool = True) -> pa.DataFrameSchema:
    """The pandera schema for normalised rows of this profile."""
    columns = {name: _feature_column(spec) for name, spec in profile.features.items()}
    if with_target:
        columns[profile.target_column] = pa.Column(
            "float64", checks=pa.Check.isin([0.0, 1.0], error="not 0 or 1"), nullable=False)
    if profile.id_column:
        columns[profile.id_column] = pa.Column(
            nullable=False, unique=True, report_duplicates="exclude_first", required=False)
    return pa.DataFrameSchema(columns, strict=False, name=f"{profile.name} applicants")


_CHECK_WORDS = {
    "not_nullable": "missing",
    "field_uniqueness": "duplicate id",
    "column_in_dataframe": "column missing",
}


def schema_failures(df: pd.DataFrame, schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Run the schema lazily and return one record per failing cell (index, column, check, value)."""
    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        rows = []
        for case in cases.itertuples(index=False):
            check = str(case.check)
            error = _check_message(schema, case.column, check)
            rows.append({"index": case.index, "column": case.column, "check": error, "value": case.failure_case})
        return pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    return pd.DataFrame(columns=FAILURE_COLUMNS)


def _check_message(schema: pa.DataFrameSchema, column: str, check: str) -> str:
    if check in _CHECK_WORDS:
        return _CHECK_WORDS[check]
    if column in schema.columns:
        for chk in schema.columns[column].checks:
            if chk.error and (check == chk.error or check.startswith(chk.name or "")):
                return chk.error
    return re.sub(r"\s+", " ", check)
