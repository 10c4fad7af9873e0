"""The per-chunk work of batch scoring: validate, score and explain one chunk of rows (a pure function).

A row's fate depends on that row only (the one whole-table rule of the validate stage,
unique ids, is not applied: a stream cannot check it in bounded memory), so chunk sizes
and engines cannot change the result, and the pandas and Dask engines run this same code.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa_schema
import pyarrow as pa

from src.batch.inputs import ID_STR, InputError
from src.batch.plain import PlainPlan
from src.config import Profile
from src.data.schemas import (
    FAILURE_COLUMNS,
    REASON_COLUMN,
    ROW_COLUMN,
    build_schema,
    combine_failures,
    normalise,
    plain_decimals,
    reason_texts,
    row_failures,
)
from src.scoring.scorer import DECISIONS, Scorer, top_contributions

COLUMNS_COLUMN = "reject_columns"


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
    # A decline's or referral's principal reason codes (TreeSHAP on those rows). False only for
    # re-scoring where nobody is decided (backtests, monitoring): the column is then null.
    adverse_action: bool = True
    include_features: bool = False
    # True: leave out the columns that differ between runs of the same model on the same input
    # (model_version, scored_at), for outputs DVC tracks; the run's log still names them.
    reproducible: bool = False

    @property
    def profile(self) -> Profile:
        return self.scorer.profile

    @cached_property
    def plain_plan(self) -> PlainPlan | None:
        """The fast path's plan for chunks of clean number columns (None: every chunk takes the general path)."""
        if self.id_kind == ID_STR:
            return None
        return PlainPlan.build(self.profile, self.scorer, self.profile.id_column if self.id_kind else None)

    @cached_property
    def rules(self) -> pa_schema.DataFrameSchema:
        """The validate stage's per-row rules (built once per job, not per chunk)."""
        return build_schema(self.profile, with_target=False, unique_ids=False)

    def output_schema(self) -> pa.Schema:
        """The scored file's columns as readers see them; fixed per run, so every chunk and part file agrees."""
        return pa.schema([pa.field(f.name, f.type.value_type, f.nullable) if pa.types.is_dictionary(f.type) else f
                          for f in self.table_schema()])

    def table_schema(self) -> pa.Schema:
        """The scored chunks in memory: :meth:`output_schema` with its few-valued text columns (decision,
        model name and version) dictionary-encoded. Parquet writes a dictionary column as it is instead
        of hashing ten million equal strings, and the file reads back as text (writers store no Arrow
        schema: see ``WRITE_OPTIONS``)."""
        text = pa.dictionary(pa.int8(), pa.string())
        fields = [pa.field("id", pa.string() if self.id_kind == ID_STR else pa.int64(), nullable=False),
                  pa.field("probability", pa.float64()), pa.field("decision", text),
                  pa.field("model_name", text)]
        if not self.reproducible:
            fields += [pa.field("model_version", text), pa.field("scored_at", pa.timestamp("us", tz="UTC"))]
        fields.append(pa.field("adverse_action", pa.list_(pa.string())))
        for i in range(1, self.top_reasons + 1):
            fields += [pa.field(f"reason_{i}_feature", pa.string()), pa.field(f"reason_{i}_contribution",
                                                                             pa.float64())]
        if self.include_features:
            for name, spec in self.profile.features.items():
                kind = pa.float64() if not spec.is_categorical else (
                    pa.int64() if spec.value_kind is int else pa.string())
                fields.append(pa.field(name, kind))
        return pa.schema(fields)

    def dictionary_columns(self) -> list[str]:
        """Columns Parquet should dictionary-encode: the few-valued ones (text other than the id, and the
        run's one timestamp). Ids, probabilities and contributions are nearly all distinct: trying a
        dictionary on them first cost more than the rest of writing."""
        return [f.name for f in self.table_schema() if f.name != "id" and (
            pa.types.is_dictionary(f.type) or pa.types.is_string(f.type) or pa.types.is_timestamp(f.type))]

    def statistics_columns(self) -> list[str]:
        """Columns Parquet keeps min/max statistics for: the ones a reader filters on (ids, probabilities,
        contributions, number features). The few-valued columns' statistics say little and cost ~2 ms of
        a 100,000-row chunk's writing."""
        dictionary = set(self.dictionary_columns())
        return [f.name for f in self.table_schema() if f.name not in dictionary and not pa.types.is_nested(f.type)]

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


def _adverse_action(job: BatchJob, matrix: np.ndarray, decision_codes: np.ndarray,
                    contrib: np.ndarray | None) -> pa.Array:
    """Each row's principal reason codes: the inputs that raised the risk most, for declines and referrals only.

    TreeSHAP runs on the declined and referred rows alone (unless the run computes reasons for all).
    """
    scorer = job.scorer
    if not job.adverse_action:
        return pa.nulls(len(decision_codes), pa.list_(pa.string()))
    adverse = np.flatnonzero(decision_codes > 0)
    counts = np.zeros(len(decision_codes), dtype=np.int32)
    values = np.empty(0, dtype=object)
    if len(adverse) and scorer.adverse_reasons:
        owed = contrib[adverse] if contrib is not None else scorer.contributions(matrix[adverse])
        order = scorer.principal(np.atleast_2d(owed))
        chosen = order >= 0
        counts[adverse] = chosen.sum(axis=1)
        values = np.asarray(scorer.reason_codes, dtype=object)[order[chosen]]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.string()))


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
    plain = plain_decimals(raw)
    if plain is not None and plain[1].all():  # every id a short plain decimal, read by Arrow: exact in float64
        values, missing = plain[0], np.zeros(len(raw), dtype=bool)
    else:
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


def _repeated(text: str, rows: int) -> pa.DictionaryArray:
    """One text value on every row, dictionary-encoded (one string, ``rows`` one-byte indices)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int8)), pa.array([text]))


@dataclass(frozen=True)
class Judged:
    """A chunk after validation: the booster's matrix of the rows kept, their ids and typed features."""

    matrix: np.ndarray
    ids: np.ndarray  # int64 (or text) ids of the rows kept, or their input row numbers
    features: dict[str, Any]  # feature -> the kept rows' validated values (for --include-features)
    counts: Counts
    rejects: pa.Table


def _judge(raw: pd.DataFrame, job: BatchJob, rows: np.ndarray) -> Judged:
    """The general path: every rule of the validate stage, rejects with every reason (any input)."""
    profile = job.profile
    n = len(raw)
    typed, type_failures = normalise(raw, profile, with_target=False)
    id_col = profile.id_column if job.id_kind else None
    if id_col:
        typed[id_col], id_failures = _typed_ids(raw[id_col], job.id_kind)
        type_failures = pd.concat([type_failures, id_failures], ignore_index=True) if len(id_failures) \
            else type_failures
    check_failures = row_failures(typed, profile, job.rules)
    if len(type_failures) or len(check_failures):
        failures = combine_failures(type_failures, check_failures)
        bad = np.sort(failures["index"].unique()).astype(np.int64)
        per_reason = Counter(failures.groupby("reason_key")["index"].nunique().to_dict())
    else:  # clean data, the usual chunk: no pandas work on empty tables (a few ms a chunk)
        bad, per_reason = np.empty(0, dtype=np.int64), Counter()
    keep = np.ones(n, dtype=bool)
    keep[bad] = False
    counts = Counts(rows_in=n, scored=int(keep.sum()), rejected=len(bad), rejected_per_reason=per_reason)

    rejects_schema = job.rejects_schema()
    reject_data: dict[str, Any] = {ROW_COLUMN: rows[bad]}
    if len(bad):
        named = failures.groupby("index")["column"].agg(lambda c: ", ".join(dict.fromkeys(map(str, c))))
        reject_data[COLUMNS_COLUMN] = named.reindex(bad).to_numpy(object)
        reject_data[REASON_COLUMN] = reason_texts(failures).reindex(bad).to_numpy(object)
    else:
        reject_data[COLUMNS_COLUMN] = reject_data[REASON_COLUMN] = np.array([], dtype=object)
    for name in rejects_schema.names[3:]:
        if len(bad):
            reject_data[name] = raw[name].iloc[bad].astype("string").to_numpy(object, na_value=None)
        else:
            reject_data[name] = np.array([], dtype=object)
    rejects = pa.Table.from_pydict(reject_data, schema=rejects_schema)

    good = typed if not len(bad) else typed.loc[keep]
    scorer = job.scorer
    matrix = scorer.encode_frame(good) if len(good) else np.empty((0, len(scorer.columns)))
    ids = rows[keep] if not id_col else good[id_col].to_numpy(object if job.id_kind == ID_STR else np.int64)
    features = {name: good[name] for name in profile.features} if job.include_features else {}
    return Judged(matrix, ids, features, counts, rejects)


def _clean(raw: pd.DataFrame, job: BatchJob, rows: np.ndarray) -> Judged | None:
    """The fast path (src/batch/plain.py): a chunk of plain number columns with no row to reject."""
    plan = job.plain_plan
    clean = plan.read(raw, job.scorer, job.include_features) if plan is not None else None
    if clean is None:
        return None
    return Judged(clean.matrix, rows if clean.ids is None else clean.ids, clean.features,
                  Counts(rows_in=len(raw), scored=len(raw)), job.rejects_schema().empty_table())


def score_chunk(raw: pd.DataFrame, job: BatchJob, first_row: int) -> ChunkResult:
    """Validate, score and explain one chunk whose first row is input row ``first_row`` (0-based).

    ``raw`` has the profile's column names (as read, untyped). Rows failing any per-row rule of
    the validate stage become rejects with every reason; the others are encoded as one matrix
    and scored with one booster call (and one ``pred_contrib`` call with reasons).
    """
    profile = job.profile
    missing = [name for name in profile.features if name not in raw.columns]
    if missing:  # the engines plan columns per file first (inputs.column_plan); a direct caller gets the same word
        raise InputError(f"rows from input row {first_row}: missing required column(s) for profile "
                         f"'{profile.name}': {', '.join(missing)}")
    raw = raw.reset_index(drop=True)
    rows = np.arange(first_row, first_row + len(raw), dtype=np.int64)
    judged = _clean(raw, job, rows) or _judge(raw, job, rows)
    matrix, counts, scorer = judged.matrix, judged.counts, job.scorer
    m = len(matrix)
    if m:
        if job.top_reasons:
            proba, contrib = scorer.probabilities_and_contributions(matrix)
        else:
            proba = scorer.probabilities(matrix)
    else:
        proba, contrib = np.empty(0), np.empty((0, len(scorer.columns) + 1))
    codes = scorer.decision_codes(proba)
    counts.decisions.update({name: int(n) for name, n in zip(DECISIONS, np.bincount(codes, minlength=3), strict=True)
                             if n})
    decisions = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(DECISIONS))
    schema = job.table_schema()
    arrays: dict[str, pa.Array] = {
        "id": pa.array(judged.ids, type=schema.field("id").type),
        "probability": pa.array(proba, pa.float64()),
        "decision": decisions,
        "model_name": _repeated(job.model_name, m),
    }
    if not job.reproducible:
        arrays["model_version"] = _repeated(job.model_version, m)
        arrays["scored_at"] = pa.repeat(pa.scalar(job.scored_at.to_pydatetime(), pa.timestamp("us", tz="UTC")), m)
    arrays["adverse_action"] = _adverse_action(job, matrix, codes, contrib if job.top_reasons else None)
    if job.top_reasons:
        order = top_contributions(contrib, len(scorer.columns), job.top_reasons)
        names = np.asarray(scorer.columns, dtype=object)
        for i in range(job.top_reasons):
            arrays[f"reason_{i + 1}_feature"] = pa.array(names[order[:, i]], pa.string())
            arrays[f"reason_{i + 1}_contribution"] = pa.array(contrib[np.arange(m), order[:, i]], pa.float64())
    if job.include_features:
        for name in profile.features:
            arrays[name] = pa.Array.from_pandas(judged.features[name]).cast(schema.field(name).type)
    scored = pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)
    return ChunkResult(scored=scored, rejects=judged.rejects, counts=counts)
