"""Scoring metrics and the cost-based decision threshold.

Kept apart from the stages so training (threshold on valid) and evaluation
(metrics on test) use exactly the same definitions, and tests can check them
against sklearn and brute force.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def ks_statistic(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score CDFs of defaulters and non-defaulters."""
    fpr, tpr, _ = roc_curve(y_true, proba)
    return float(np.max(np.abs(tpr - fpr)))


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> float:
    """ECE: over equal-width probability bins, the row-weighted gap between mean predicted and observed rate."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(proba, dtype=float)
    if len(p) == 0:
        raise ValueError("no rows to measure calibration on")
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, weights=p, minlength=bins) - np.bincount(index, weights=y, minlength=bins))
    return float(gap[rows > 0].sum() / len(p))


def decide(proba: np.ndarray, threshold: float) -> np.ndarray:
    """1 = decline (predicted default) when the probability reaches the threshold."""
    return (np.asarray(proba) >= threshold).astype(int)


def score_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, float]:
    """Ranking, calibration and at-threshold metrics for one labelled set."""
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    pred = decide(proba, threshold)
    auc = roc_auc_score(y_true, proba)
    return {
        "roc_auc": float(auc),
        "pr_auc": float(average_precision_score(y_true, proba)),
        "ks": ks_statistic(y_true, proba),
        "gini": float(2 * auc - 1),
        "brier": float(brier_score_loss(y_true, proba)),
        "ece": expected_calibration_error(y_true, proba),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "threshold": float(threshold),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "approval_rate": float(1 - pred.mean()),
        "default_rate_approved": float(y_true[pred == 0].mean()) if (pred == 0).any() else 0.0,
        "rows": len(y_true),
    }


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    expected_cost: float  # per applicant
    approval_rate: float


def choose_threshold(y_true: np.ndarray, proba: np.ndarray, cost_fn: float, cost_fp: float) -> ThresholdChoice:
    """The threshold minimising cost_fn * approved defaulters + cost_fp * declined good customers.

    Exact over every distinct score (no grid): applicants are sorted by score and
    each cut between two distinct scores is a candidate; the threshold sits
    midway between the last approved and the first declined score, which
    generalises better than sitting on a training score. Ties in cost go to the
    cut that approves more applicants.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, dtype=float)
    n = len(p)
    if n == 0:
        raise ValueError("no rows to choose a threshold on")
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    pos_below = np.concatenate([[0], np.cumsum(ys)])
    neg_below = np.concatenate([[0], np.cumsum(1 - ys)])
    uniq, first = np.unique(ps, return_index=True)
    cuts = np.append(first, n)  # cut k: the k lowest scores are approved
    cost = cost_fn * pos_below[cuts] + cost_fp * (neg_below[-1] - neg_below[cuts])
    best = int(np.flatnonzero(cost == cost.min())[-1])
    if best == len(uniq):  # approve everyone
        threshold = float(np.nextafter(uniq[-1], np.inf)) if uniq[-1] >= 1.0 else float((uniq[-1] + 1.0) / 2)
    elif best == 0:  # decline everyone
        threshold = float(uniq[0] / 2)
    else:
        # Midway, unless the two scores are adjacent floats and the midpoint rounds
        # onto the approved one: then the declined score itself is the threshold.
        low, high = uniq[best - 1], uniq[best]
        mid = (low + high) / 2
        threshold = float(mid if mid > low else high)
    return ThresholdChoice(threshold=threshold, expected_cost=float(cost[best] / n),
                           approval_rate=float(cuts[best] / n))
