"""Drift tests that PSI misses: a sample-size-aware test per feature, and default rates per category.

PSI on ten reference-quantile bins barely moves when a heavy-tailed amount is scaled
(x1.6: PSI ~0.1) or two common codes swap places (PSI ~0.07), though either would
wreck decisions. So every feature (and the score) also gets a two-sample test:

* numbers: Kolmogorov-Smirnov (the largest gap between the two CDFs, ``D``);
* codes: chi-square on the category counts (the PSI bins, with other/unseen and
  missing), with the Jensen-Shannon distance of the shares as its effect size.

A test fires when its p-value is below ``drift_alpha`` shared by all the tests of the run
(Bonferroni), *and* its effect reaches a floor (``ks_min_statistic`` /
``js_min_distance``): the p-value keeps small batches from flagging noise, the floor keeps
a million-row batch from flagging a shift too small to matter. When the batch carries
outcomes, each category's default rate is compared with the reference's (two-proportion
z-test, same two conditions): a swapped code shows up there even when the shares barely move.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

KS, CHI_SQUARE, DEFAULT_RATE = "ks", "chi-square", "default-rate"


@dataclass(frozen=True)
class TestResult:
    """One two-sample test: its statistic, p-value, effect size, and whether it fired."""

    name: str
    statistic: float | None  # None: not testable (a side with no values)
    p_value: float | None
    effect: float | None  # KS: D itself; chi-square: the Jensen-Shannon distance of the shares
    fired: bool

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "statistic": _round(self.statistic),
                               "p_value": _significant(self.p_value), "fired": self.fired}
        if self.name == CHI_SQUARE:
            out["js_distance"] = _round(self.effect)
        return out


def ks_test(reference: pd.Series, batch: pd.Series, alpha: float, min_statistic: float) -> TestResult:
    """Two-sample Kolmogorov-Smirnov on the non-missing values (missing values are PSI's own bin)."""
    ref = _numbers(reference)
    cur = _numbers(batch)
    if ref.size == 0 or cur.size == 0:
        return TestResult(KS, None, None, None, False)
    result = sps.ks_2samp(ref, cur, method="asymp")
    d, p = float(result.statistic), float(result.pvalue)
    return TestResult(KS, d, p, d, p < alpha and d >= min_statistic)


def chi_square_test(reference_counts: Sequence[float], batch_counts: Sequence[float], alpha: float,
                    min_distance: float) -> TestResult:
    """Chi-square test of homogeneity over the categories either side has; JS distance as the effect size."""
    ref = np.asarray(reference_counts, dtype=float)
    cur = np.asarray(batch_counts, dtype=float)
    used = (ref + cur) > 0
    ref, cur = ref[used], cur[used]
    if ref.sum() <= 0 or cur.sum() <= 0:
        return TestResult(CHI_SQUARE, None, None, None, False)
    distance = float(jensenshannon(ref / ref.sum(), cur / cur.sum(), base=2))
    if used.sum() < 2:  # one category only on both sides: nothing can have moved
        return TestResult(CHI_SQUARE, 0.0, 1.0, distance, False)
    result = sps.chi2_contingency(np.vstack([ref, cur]), correction=False)
    chi2, p = float(result.statistic), float(result.pvalue)
    return TestResult(CHI_SQUARE, chi2, p, distance, p < alpha and distance >= min_distance)


def default_rates(reference_keys: pd.Series, reference_outcomes: pd.Series, batch_keys: pd.Series,
                  batch_outcomes: pd.Series, min_rows: int) -> list[dict[str, Any]]:
    """Per category with at least ``min_rows`` rows on both sides: both default rates, counts and the
    two-proportion z statistic (pooled). p-values and verdicts come from :func:`judge_default_rates`."""
    ref = pd.DataFrame({"key": reference_keys.to_numpy(object), "y": reference_outcomes.to_numpy(float)}).dropna()
    cur = pd.DataFrame({"key": batch_keys.to_numpy(object), "y": batch_outcomes.to_numpy(float)}).dropna()
    ref_stats = ref.groupby("key")["y"].agg(["sum", "size"])
    cur_stats = cur.groupby("key")["y"].agg(["sum", "size"])
    out = []
    for key in sorted(set(ref_stats.index) & set(cur_stats.index), key=str):
        x1, n1 = float(ref_stats.at[key, "sum"]), int(ref_stats.at[key, "size"])
        x2, n2 = float(cur_stats.at[key, "sum"]), int(cur_stats.at[key, "size"])
        if n1 < min_rows or n2 < min_rows:
            continue
        pooled = (x1 + x2) / (n1 + n2)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        diff = x2 / n2 - x1 / n1
        z = diff / se if se > 0 else 0.0  # se 0: every row of both sides has the same outcome
        out.append({"category": str(key), "reference_rate": round(x1 / n1, 6), "batch_rate": round(x2 / n2, 6),
                    "reference_rows": n1, "batch_rows": n2, "z": round(z, 4)})
    return out


def judge_default_rates(categories: list[dict[str, Any]], alpha: float, min_difference: float) -> bool:
    """Add each category's p-value and verdict (in place); True when any category fired."""
    fired_any = False
    for entry in categories:
        p = math.erfc(abs(entry["z"]) / math.sqrt(2))  # two-sided normal p-value
        fired = p < alpha and abs(entry["batch_rate"] - entry["reference_rate"]) >= min_difference
        entry["p_value"] = _significant(p)
        entry["fired"] = fired
        fired_any = fired_any or fired
    return fired_any


def outcome_labels(raw: pd.Series, positive: Any) -> tuple[pd.Series, pd.Series]:
    """(valid, label) per value of an outcome column: numeric targets accept 0, 1 and the positive value;
    a textual target any non-empty text, positive when it equals the profile's value."""
    if isinstance(positive, int | float) and not isinstance(positive, bool):
        numeric = pd.to_numeric(raw, errors="coerce")
        return numeric.isin([0, 1, positive]), numeric == positive
    text = raw.astype("string").str.strip()
    return text.notna() & (text != ""), text == str(positive)


def _numbers(values: pd.Series) -> np.ndarray:
    array = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return array[~np.isnan(array)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _significant(value: float | None) -> float | None:
    """p-values span hundreds of orders of magnitude: four significant digits, not six decimals."""
    return None if value is None else float(f"{value:.4g}")
