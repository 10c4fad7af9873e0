"""Clean number columns straight into the booster's matrix: the batch engines' fast path.

A chunk whose columns arrive as plain NumPy numbers (int64 codes, int64 or float64 amounts:
Parquet's usual types) and whose every row passes the per-row rules needs none of
``normalise``, the row rules or the frame encoder: each column is checked against its
bounds or code list and looked up in the scorer's tables in a few NumPy passes. Any other
chunk (text, a missing cell, a value out of bounds) gets None here and takes the general
path, which alone writes rejects; tests hold both paths to the same output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from src.config import Profile
from src.scoring.scorer import Scorer

MAX_CODE_SPAN = 4096  # a code list spanning more integers than this is judged by the general path


@dataclass(frozen=True)
class Codes:
    """An integer-coded column: which codes are valid, and a look-up table, both indexed by code - low."""

    low: int
    valid: np.ndarray  # bool
    table: np.ndarray | None  # float64 encodings, None when the model reads the code as a number

    def index(self, values: np.ndarray) -> np.ndarray | None:
        """Each value's position in the tables, or None when any value is not one of the codes."""
        high = self.low + len(self.valid) - 1
        if values.min() < self.low or values.max() > high:
            return None
        index = values - self.low
        return index if self.valid[index].all() else None


@dataclass(frozen=True)
class Clean:
    """A clean chunk, read: what the general path would have made of it."""

    matrix: np.ndarray  # the booster's input
    ids: np.ndarray | None  # int64 ids; None when ids are row numbers
    features: dict[str, np.ndarray]  # with_features: each feature as validation types it (float64, int64 codes)


@dataclass(frozen=True)
class PlainPlan:
    """What a clean chunk needs, worked out once per job from the profile and the scorer."""

    numbers: dict[str, tuple[float, float]]  # amount column -> bounds (infinite when unbounded)
    codes: dict[str, Codes]  # integer-coded column -> its codes
    order: list[tuple[str, bool]]  # model columns in the booster's order: (column, looked up?)
    id_column: str | None  # an int64 id column to read, None when ids are row numbers

    @classmethod
    def build(cls, profile: Profile, scorer: Scorer, id_column: str | None) -> PlainPlan | None:
        """None when the profile or model needs the general path for every chunk (text codes, open code
        lists, a looked-up column that is not an integer code...)."""
        numbers: dict[str, tuple[float, float]] = {}
        code_lists: dict[str, list[int]] = {}
        for name, spec in profile.features.items():
            if not spec.is_categorical:
                numbers[name] = (-np.inf if spec.min is None else float(spec.min),
                                 np.inf if spec.max is None else float(spec.max))
            elif spec.value_kind is int and spec.values and all(type(v) is int for v in spec.values):
                code_lists[name] = sorted(spec.values)  # type: ignore[arg-type]
            else:
                return None
        codes: dict[str, Codes] = {}
        order: list[tuple[str, bool]] = []
        plan = {column: (kind, spec) for column, kind, spec in scorer.encoding_plan}
        for name, values in code_lists.items():
            low, span = values[0], values[-1] - values[0] + 1
            if span > MAX_CODE_SPAN:
                return None
            valid = np.zeros(span, dtype=bool)
            valid[np.asarray(values) - low] = True
            kind, spec = plan.get(name, ("number", None))
            table = None
            if kind == "lookup":
                lookup, default = spec
                table = np.array([lookup.get(low + i, default) for i in range(span)], dtype=np.float64)
            codes[name] = Codes(low, valid, table)
        for column, kind, _spec in scorer.encoding_plan:
            if column not in numbers and column not in codes:
                return None
            if kind == "lookup" and column not in codes:
                return None
            order.append((column, kind == "lookup"))
        return cls(numbers, codes, order, id_column)

    def read(self, raw: pd.DataFrame, scorer: Scorer, with_features: bool = False) -> Clean | None:
        """``raw`` as the booster's matrix, or None when a column is not a plain NumPy number column or any
        row might break a rule."""
        columns: dict[str, np.ndarray] = {}
        for name in (*self.numbers, *self.codes, *([self.id_column] if self.id_column else [])):
            series = raw.get(name)
            if series is None:
                return None
            dtype = series.dtype
            if dtype != np.int64 and (dtype != np.float64 or name in self.codes or name == self.id_column):
                return None
            columns[name] = series.to_numpy()
        if not len(raw):
            return None
        for name, (low, high) in self.numbers.items():
            values = columns[name]
            if not (values.min() >= low and values.max() <= high):  # a NaN makes min() NaN: it fails
                return None
        positions: dict[str, np.ndarray] = {}
        for name, codes in self.codes.items():
            index = codes.index(columns[name])
            if index is None:
                return None
            positions[name] = index
        out = np.empty((len(self.order), len(raw)), dtype=np.float64)
        for j, (name, looked_up) in enumerate(self.order):
            if looked_up:
                table: Any = self.codes[name].table
                np.take(table, positions[name], out=out[j])
            else:
                out[j] = columns[name]  # int64 -> float64 as validation's astype would
        features = {name: columns[name].astype(np.float64, copy=False) if name in self.numbers else columns[name]
                    for name in (*self.numbers, *self.codes)} if with_features else {}
        return Clean(scorer.arrange(out), columns[self.id_column] if self.id_column else None, features)
