"""Population Stability Index (PSI): how far a batch's distribution moved from the reference.

PSI = sum over bins of (batch share - reference share) * ln(batch share / reference share).
Bins come from the *reference* only, so every batch is measured on the same ruler:

* numeric columns: quantile bins of the reference (up to ``bins``; ties in discrete
  columns merge bins), intervals (lower, upper], the outer ones open-ended, plus a
  "missing" bin;
* categorical columns: one bin per known category (the profile's declared codes and
  anything seen in the reference), an "other/unseen" bin for codes the reference
  never had, and a "missing" bin.

A share of zero would make the log infinite, so every share is floored at
``epsilon`` (standard smoothing; an empty bin on both sides then adds exactly 0).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from src.scoring.scorer import _key as scorer_key

OTHER = "__other__"
MISSING = "__missing__"
NONE, MODERATE, SIGNIFICANT = "none", "moderate", "significant"
BANDS = (NONE, MODERATE, SIGNIFICANT)


@dataclass(frozen=True)
class PsiResult:
    """PSI of one column plus the per-bin shares it came from (kept for the report)."""

    psi: float
    labels: tuple[str, ...]
    reference_share: tuple[float, ...]
    batch_share: tuple[float, ...]
    reference_counts: tuple[float, ...] = ()  # rows per bin (for the chi-square test: src/monitoring/stats.py)
    batch_counts: tuple[float, ...] = ()

    def bins(self) -> list[dict[str, Any]]:
        return [{"bin": label, "reference": round(r, 6), "batch": round(b, 6)}
                for label, r, b in zip(self.labels, self.reference_share, self.batch_share, strict=True)]


def psi_from_counts(reference: Iterable[float], batch: Iterable[float], epsilon: float) -> float:
    """PSI of two count (or share) vectors over the same bins, shares floored at ``epsilon``."""
    ref = np.asarray(list(reference), dtype=float)
    cur = np.asarray(list(batch), dtype=float)
    if ref.shape != cur.shape or ref.size == 0:
        raise ValueError("reference and batch need the same, non-empty set of bins")
    if ref.sum() <= 0 or cur.sum() <= 0:
        raise ValueError("reference and batch each need at least one row")
    p = np.maximum(ref / ref.sum(), epsilon)
    q = np.maximum(cur / cur.sum(), epsilon)
    return float(np.sum((q - p) * np.log(q / p)))


def band(psi: float, moderate: float, significant: float) -> str:
    """'none' below ``moderate``, 'moderate' below ``significant``, else 'significant'."""
    if psi >= significant:
        return SIGNIFICANT
    if psi >= moderate:
        return MODERATE
    return NONE


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior cut points: the reference's 1/bins ... (bins-1)/bins quantiles, duplicates merged."""
    values = np.asarray(reference, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0 or bins < 2:
        return np.empty(0)
    # inverted_cdf: every edge is a value the reference holds, so discrete codes are never split mid-way.
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf"))


def numeric_psi(reference: pd.Series, batch: pd.Series, bins: int, epsilon: float) -> PsiResult:
    """PSI of a numeric column on the reference's quantile bins (plus a missing bin)."""
    ref = pd.to_numeric(reference, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    cur = pd.to_numeric(batch, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    edges = quantile_edges(ref, bins)
    ref_counts, cur_counts = _bin_counts(ref, edges), _bin_counts(cur, edges)
    labels = _interval_labels(edges)
    return _result(labels, ref_counts, cur_counts, epsilon)


def _bin_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin (lower, upper], then the missing values last."""
    missing = np.isnan(values)
    index = np.searchsorted(edges, values[~missing], side="left")
    counts = np.bincount(index, minlength=len(edges) + 1).astype(float)
    return np.append(counts, missing.sum())


def _interval_labels(edges: np.ndarray) -> list[str]:
    bounds = ["-inf", *(f"{e:.6g}" for e in edges), "inf"]
    return [f"({lo}, {hi}]" for lo, hi in itertools.pairwise(bounds)] + [MISSING]


def category_key(value: Any) -> Any:
    """One spelling per category, as the service's scorer looks codes up: 1, 1.0 and np.int64(1) are
    the same code, ' RENT ' is 'RENT'; NaN, None, NA and blanks are missing."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, str):
        return value.strip() or None
    return scorer_key(value)


def categorical_psi(reference: pd.Series, batch: pd.Series, known: Iterable[Any] | None,
                    epsilon: float) -> PsiResult:
    """PSI over the known categories (declared + seen in the reference), other/unseen and missing."""
    ref_keys = reference.map(category_key, na_action="ignore").astype(object)
    cur_keys = batch.map(category_key, na_action="ignore").astype(object)
    categories = list(dict.fromkeys([*(category_key(k) for k in (known or ())),
                                     *sorted(ref_keys.dropna().unique().tolist(), key=str)]))
    ref_counts = _category_counts(ref_keys, categories)
    cur_counts = _category_counts(cur_keys, categories)
    return _result([str(c) for c in categories] + [OTHER, MISSING], ref_counts, cur_counts, epsilon)


def _category_counts(keys: pd.Series, categories: list[Any]) -> np.ndarray:
    present = keys.dropna()
    counts = present.value_counts()
    known = [float(counts.get(c, 0)) for c in categories]
    other = float(len(present) - sum(known))
    return np.array([*known, other, float(len(keys) - len(present))])


def _result(labels: list[str], ref_counts: np.ndarray, cur_counts: np.ndarray, epsilon: float) -> PsiResult:
    value = psi_from_counts(ref_counts, cur_counts, epsilon)
    return PsiResult(psi=value, labels=tuple(labels),
                     reference_share=tuple((ref_counts / ref_counts.sum()).tolist()),
                     batch_share=tuple((cur_counts / cur_counts.sum()).tolist()),
                     reference_counts=tuple(ref_counts.tolist()), batch_counts=tuple(cur_counts.tolist()))
