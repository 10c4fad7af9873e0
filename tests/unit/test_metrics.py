"""Cost-based threshold (against brute force) and scoring metrics (against independent computations)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp, rankdata
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

from src.modeling.metrics import choose_threshold, decide, ks_statistic, score_metrics

# --- helpers ---------------------------------------------------------------------------------------


def cost_at(y: np.ndarray, p: np.ndarray, threshold: float, cost_fn: float, cost_fp: float) -> float:
    """Total cost of declining every applicant whose score reaches ``threshold``."""
    declined = p >= threshold
    return cost_fn * np.sum((y == 1) & ~declined) + cost_fp * np.sum((y == 0) & declined)


def brute_force_min_cost(y: np.ndarray, p: np.ndarray, cost_fn: float, cost_fp: float) -> float:
    """Minimal total cost over every possible cut: each distinct score as threshold, or above all."""
    candidates = [*np.unique(p), np.inf]
    return min(cost_at(y, p, t, cost_fn, cost_fp) for t in candidates)


def random_case(seed: int, n: int = 300, decimals: int | None = None, informative: bool = True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.25).astype(int)
    logit = rng.normal(0, 1, n) + (1.5 * y if informative else 0)
    p = 1 / (1 + np.exp(-logit))
    if decimals is not None:
        p = np.round(p, decimals)  # many ties
    return y, p


def assert_threshold_separates(p: np.ndarray, threshold: float) -> None:
    approved, declined = p[p < threshold], p[p >= threshold]
    if len(approved) and len(declined):
        assert approved.max() < threshold < declined.min()


# --- choose_threshold vs brute force ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(("cost_fn", "cost_fp"), [(5.0, 1.0), (1.0, 1.0), (1.0, 4.0), (20.0, 1.0), (0.3, 0.7)])
def test_threshold_matches_brute_force(seed, cost_fn, cost_fp):
    y, p = random_case(seed, decimals=2 if seed % 2 else None)
    choice = choose_threshold(y, p, cost_fn, cost_fp)
    best = brute_force_min_cost(y, p, cost_fn, cost_fp)
    achieved = cost_at(y, p, choice.threshold, cost_fn, cost_fp)
    assert achieved == pytest.approx(best)
    assert choice.expected_cost == pytest.approx(best / len(y))
    assert choice.approval_rate == pytest.approx(np.mean(p < choice.threshold))
    assert_threshold_separates(p, choice.threshold)


@pytest.mark.parametrize("seed", range(3))
def test_threshold_beats_every_point_of_a_fine_grid(seed):
    y, p = random_case(seed + 100, n=500)
    choice = choose_threshold(y, p, 5.0, 1.0)
    grid = np.linspace(0, 1, 20001)[:, None]
    declined = p[None, :] >= grid
    grid_costs = 5.0 * ((y == 1) & ~declined).sum(axis=1) + 1.0 * ((y == 0) & declined).sum(axis=1)
    grid_best = grid_costs.min()
    assert cost_at(y, p, choice.threshold, 5.0, 1.0) <= grid_best + 1e-9


def test_cost_ties_go_to_more_approvals():
    # decline both (cost 1 x declined good) or approve both (cost 1 x approved defaulter): equal costs
    y, p = np.array([1, 0]), np.array([0.2, 0.8])
    choice = choose_threshold(y, p, 1.0, 1.0)
    assert choice.approval_rate == 1.0
    assert decide(p, choice.threshold).tolist() == [0, 0]
    assert choice.expected_cost == pytest.approx(0.5)


def test_higher_false_negative_cost_lowers_threshold():
    y, p = random_case(7, n=1000)
    ratios = [0.2, 0.5, 1, 2, 3, 5, 10, 50]
    choices = [choose_threshold(y, p, r, 1.0) for r in ratios]
    thresholds = [c.threshold for c in choices]
    approvals = [c.approval_rate for c in choices]
    assert thresholds == sorted(thresholds, reverse=True)
    assert approvals == sorted(approvals, reverse=True)
    assert thresholds[0] > thresholds[-1] and approvals[0] > approvals[-1]


def test_cost_false_positive_is_used():
    y, p = random_case(8, n=1000)
    cheap_fp = choose_threshold(y, p, 5.0, 0.5)
    dear_fp = choose_threshold(y, p, 5.0, 5.0)
    assert dear_fp.approval_rate > cheap_fp.approval_rate
    assert dear_fp.threshold > cheap_fp.threshold


def test_only_the_cost_ratio_matters():
    y, p = random_case(9, n=400)
    a = choose_threshold(y, p, 5.0, 1.0)
    b = choose_threshold(y, p, 50.0, 10.0)
    assert a.threshold == b.threshold
    assert b.expected_cost == pytest.approx(10 * a.expected_cost)


def test_all_positive_labels_decline_everyone():
    p = np.array([0.0, 0.1, 0.4, 0.4, 0.9])
    choice = choose_threshold(np.ones(5, dtype=int), p, 5.0, 1.0)
    assert choice.approval_rate == 0.0
    assert choice.expected_cost == 0.0
    assert decide(p, choice.threshold).tolist() == [1] * 5


def test_all_negative_labels_approve_everyone():
    for p in (np.array([0.05, 0.3, 0.3, 0.7]), np.array([0.2, 1.0])):
        choice = choose_threshold(np.zeros(len(p), dtype=int), p, 5.0, 1.0)
        assert choice.approval_rate == 1.0
        assert choice.expected_cost == 0.0
        assert choice.threshold > p.max()
        assert decide(p, choice.threshold).tolist() == [0] * len(p)


def test_ties_in_scores_move_together():
    # two applicants share 0.5: one defaults, one does not; they must be approved or declined together
    y = np.array([0, 0, 1, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.5, 0.5, 0.8, 0.9])
    choice = choose_threshold(y, p, 3.0, 1.0)
    decisions = decide(p, choice.threshold)
    assert decisions[2] == decisions[3]
    assert cost_at(y, p, choice.threshold, 3.0, 1.0) == brute_force_min_cost(y, p, 3.0, 1.0)
    # cutting between 0.2 and 0.5 (cost 1) beats cutting between 0.5 and 0.8 (cost 3)
    assert 0.2 < choice.threshold < 0.5
    assert choice.threshold == pytest.approx(0.35)


def test_all_scores_identical():
    p = np.full(10, 0.3)
    y = np.array([1] * 3 + [0] * 7)
    approve_all = choose_threshold(y, p, 2.0, 1.0)    # 3*2 = 6 < 7
    assert approve_all.approval_rate == 1.0 and approve_all.threshold > 0.3
    decline_all = choose_threshold(y, p, 3.0, 1.0)    # 3*3 = 9 > 7
    assert decline_all.approval_rate == 0.0 and decline_all.threshold <= 0.3


def test_threshold_strictly_between_last_approved_and_first_declined():
    y, p = random_case(21, n=200)
    choice = choose_threshold(y, p, 5.0, 1.0)
    order = np.sort(np.unique(p))
    last_approved = order[order < choice.threshold].max()
    first_declined = order[order >= choice.threshold].min()
    assert last_approved < choice.threshold < first_declined
    assert choice.threshold == pytest.approx((last_approved + first_declined) / 2)


def test_threshold_for_adjacent_float_scores():
    """Scores one ulp apart: the returned threshold must still reproduce the chosen cut."""
    low = 0.5
    high = np.nextafter(low, 1.0)
    y, p = np.array([0, 1]), np.array([low, high])
    choice = choose_threshold(y, p, 1.0, 1.0)
    assert choice.expected_cost == 0.0   # approve the good one, decline the defaulter
    assert decide(p, choice.threshold).tolist() == [0, 1]


def test_input_order_does_not_matter():
    y, p = random_case(22, n=300, decimals=2)
    perm = np.random.default_rng(0).permutation(len(y))
    assert choose_threshold(y, p, 5.0, 1.0) == choose_threshold(y[perm], p[perm], 5.0, 1.0)


def test_empty_input_rejected():
    with pytest.raises(ValueError, match="no rows"):
        choose_threshold(np.array([], dtype=int), np.array([]), 5.0, 1.0)


def test_decide_declines_at_the_threshold():
    assert decide(np.array([0.29, 0.3, 0.31]), 0.3).tolist() == [0, 1, 1]
    assert decide([0.5], 0.5).dtype.kind == "i"


# --- score_metrics vs independent computations -------------------------------------------------------


def manual_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney U with mid-ranks for ties."""
    ranks = rankdata(p)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    return (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def manual_average_precision(y: np.ndarray, p: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision at that threshold."""
    total, prev_recall = 0.0, 0.0
    for t in np.unique(p)[::-1]:
        pred = p >= t
        recall = np.sum(pred & (y == 1)) / y.sum()
        precision = np.sum(pred & (y == 1)) / pred.sum()
        total += (recall - prev_recall) * precision
        prev_recall = recall
    return total


def ecdf_ks(y: np.ndarray, p: np.ndarray) -> float:
    points = np.unique(p)
    neg, pos = np.sort(p[y == 0]), np.sort(p[y == 1])
    cdf_neg = np.searchsorted(neg, points, side="right") / len(neg)
    cdf_pos = np.searchsorted(pos, points, side="right") / len(pos)
    return float(np.max(np.abs(cdf_neg - cdf_pos)))


@pytest.mark.parametrize("seed", range(5))
def test_ranking_and_calibration_metrics(seed):
    y, p = random_case(seed + 40, n=600, decimals=3 if seed % 2 else None)
    m = score_metrics(y, p, 0.4)
    assert m["roc_auc"] == pytest.approx(manual_auc(y, p), abs=1e-12)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(manual_average_precision(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    manual_ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert m["log_loss"] == pytest.approx(manual_ll, rel=1e-9)
    assert m["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-9)
    assert m["gini"] == pytest.approx(2 * m["roc_auc"] - 1, abs=1e-12)
    assert m["rows"] == len(y)
    assert m["threshold"] == 0.4


@pytest.mark.parametrize("seed", range(5))
def test_ks_equals_max_gap_between_class_cdfs(seed):
    y, p = random_case(seed + 60, n=700, decimals=2 if seed % 2 else None)
    m = score_metrics(y, p, 0.5)
    assert m["ks"] == pytest.approx(ks_2samp(p[y == 0], p[y == 1]).statistic, abs=1e-12)
    assert m["ks"] == pytest.approx(ecdf_ks(y, p), abs=1e-12)
    assert m["ks"] == pytest.approx(ks_statistic(y, p), abs=1e-12)


def test_ks_of_perfect_separation_is_one():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert score_metrics(y, p, 0.5)["ks"] == 1.0


def test_ks_for_inverted_scores():
    """KS is the largest gap between the two CDFs, whichever class lies above the other."""
    y = np.array([1, 1, 1, 0, 0])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert score_metrics(y, p, 0.5)["ks"] == pytest.approx(ks_2samp(p[y == 0], p[y == 1]).statistic)


@pytest.mark.parametrize("threshold", [0.05, 0.3, 0.5, 0.73, 0.99])
def test_at_threshold_metrics_match_confusion_matrix(threshold):
    y, p = random_case(80, n=500)
    m = score_metrics(y, p, threshold)
    declined = p >= threshold
    tp = np.sum(declined & (y == 1))
    fp = np.sum(declined & (y == 0))
    fn = np.sum(~declined & (y == 1))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    assert m["precision"] == pytest.approx(precision)
    assert m["recall"] == pytest.approx(recall)
    assert m["f1"] == pytest.approx(f1)
    assert m["approval_rate"] == pytest.approx(np.mean(~declined))
    approved_defaults = y[~declined]
    assert m["default_rate_approved"] == pytest.approx(approved_defaults.mean() if len(approved_defaults) else 0.0)


def test_metrics_when_everyone_is_approved():
    y, p = random_case(81, n=100)
    m = score_metrics(y, p, 1.5)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["approval_rate"] == 1.0
    assert m["default_rate_approved"] == pytest.approx(y.mean())


def test_metrics_when_everyone_is_declined():
    y, p = random_case(82, n=100)
    m = score_metrics(y, p, 0.0)
    assert m["approval_rate"] == 0.0
    assert m["default_rate_approved"] == 0.0
    assert m["recall"] == 1.0
    assert m["precision"] == pytest.approx(y.mean())


def test_metrics_accept_lists_and_bool_labels():
    y = [True, False, True, False]
    p = [0.9, 0.1, 0.6, 0.4]
    m = score_metrics(y, p, 0.5)
    assert m["roc_auc"] == 1.0
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert all(isinstance(v, float) for k, v in m.items() if k != "rows")
