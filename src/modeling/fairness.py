"""Stage fairness: how the model's decisions fall across protected groups, and which inputs stand in for them.

On the test split at the model's threshold (approved: probability below it), per protected attribute
and group, with fairlearn's MetricFrame: rows, approval rate, adverse-impact ratio against the most
approved group (the four-fifths rule), decline rates among those who defaulted and those who repaid
(equalized odds; the gap in the latter is the equal-opportunity gap for creditworthy applicants),
default rate among the approved, ROC-AUC and calibration error. Then a proxy screen: how well each
model input alone predicts each protected attribute (redlining by postcode is the classic case).
Writes ``metrics/fairness.json`` (a DVC metric) and ``plots/approval_by_group.csv``.
"""

from __future__ import annotations

import logging
import math
from itertools import pairwise
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate
from sklearn.metrics import roc_auc_score

from src.common import PipelineError, read_table, run_main, write_json
from src.config import FairnessSettings, Profile, ProtectedSpec, Settings, load_settings
from src.config.sections import FairnessFloors
from src.modeling.train import load_trained

log = logging.getLogger(__name__)

MISSING = "missing"
PROXY_BINS = 20  # quantile bins of a numeric input in the proxy screen


def band_labels(edges: tuple[float, ...]) -> list[str]:
    """[25, 35, 62] -> under 25, 25-34, 35-61, 62+ (edges are whole numbers in every profile)."""
    def upto(hi: float) -> str:  # the last whole number below the next edge
        return f"{hi - 1:g}" if float(hi).is_integer() else f"<{hi:g}"
    middle = [f"{lo:g}-{upto(hi)}" for lo, hi in pairwise(edges)]
    return [f"under {edges[0]:g}", *middle, f"{edges[-1]:g}+"]


def groups_of(values: pd.Series, spec: ProtectedSpec) -> pd.Series:
    """Each row's group: a category's label, or a numeric attribute's band ("missing" when unknown)."""
    if spec.is_categorical:
        labels = {k: str(v) for k, v in (spec.values or {}).items()}
        out = values.astype(object).map(lambda v: labels.get(v, str(v)) if pd.notna(v) else MISSING)
        return out.astype(str)
    edges = list(spec.bands or ())
    cut = pd.cut(pd.to_numeric(values, errors="coerce"), [-np.inf, *edges, np.inf], right=False,
                 labels=band_labels(tuple(edges)))
    return cut.astype(object).where(cut.notna(), MISSING).astype(str)


def _approval_rate(y_true: np.ndarray, declined: np.ndarray) -> float:
    return 1.0 - selection_rate(y_true, declined)


def _default_rate_approved(y_true: np.ndarray, declined: np.ndarray) -> float:
    approved = np.asarray(declined) == 0
    return float(np.asarray(y_true)[approved].mean()) if approved.any() else float("nan")


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    return float(roc_auc_score(y_true, proba)) if len(np.unique(y_true)) == 2 else float("nan")


def _calibration_error(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean predicted probability minus the observed default rate (calibration in the large)."""
    return float(np.mean(proba) - np.mean(y_true))


def _clean(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def group_table(y_true: np.ndarray, proba: np.ndarray, threshold: float, groups: pd.Series,
                min_rows: int) -> dict[str, Any]:
    """The figures of one protected attribute: per group, and the gaps over the groups large enough to judge."""
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    declined = (proba >= threshold).astype(int)
    at_threshold = MetricFrame(
        metrics={"approval_rate": _approval_rate, "decline_rate_defaulted": true_positive_rate,
                 "decline_rate_repaid": false_positive_rate, "default_rate_approved": _default_rate_approved},
        y_true=y_true, y_pred=declined, sensitive_features=groups.to_numpy())
    ranking = MetricFrame(metrics={"roc_auc": _roc_auc, "calibration_error": _calibration_error},
                          y_true=y_true, y_pred=proba, sensitive_features=groups.to_numpy())
    by_group = at_threshold.by_group.join(ranking.by_group)
    rows = groups.value_counts()
    repaid = pd.Series(y_true == 0, index=groups.index).groupby(groups).sum()
    judged = [g for g in by_group.index if rows[g] >= min_rows and g != MISSING]
    best = by_group.loc[judged, "approval_rate"].max() if judged else float("nan")
    table: dict[str, Any] = {}
    for group in sorted(by_group.index, key=str):
        figures = {k: _clean(v) for k, v in by_group.loc[group].items()}
        if group not in judged:
            ratio = float("nan")
        else:  # nobody approved in any group: no group is favoured over another
            ratio = by_group.loc[group, "approval_rate"] / best if best > 0 else 1.0
        table[str(group)] = {"rows": int(rows[group]), "repaid": int(repaid.get(group, 0)), "judged": group in judged,
                             **figures, "adverse_impact_ratio": _clean(ratio)}
    summary: dict[str, Any] = {"groups": table, "judged_groups": len(judged)}
    if len(judged) >= 2:
        sub = by_group.loc[judged]
        ratios = [table[str(g)]["adverse_impact_ratio"] for g in judged]
        summary.update(
            min_adverse_impact_ratio=_clean(min(ratios)),
            least_approved_group=str(sub["approval_rate"].idxmin()),
            most_approved_group=str(sub["approval_rate"].idxmax()),
            equal_opportunity_gap=_clean(sub["decline_rate_repaid"].max() - sub["decline_rate_repaid"].min()),
            most_declined_repaid_group=str(sub["decline_rate_repaid"].idxmax()),
            least_declined_repaid_group=str(sub["decline_rate_repaid"].idxmin()),
            equalized_odds_gap=_clean(max(sub["decline_rate_repaid"].max() - sub["decline_rate_repaid"].min(),
                                          sub["decline_rate_defaulted"].max() - sub["decline_rate_defaulted"].min())),
        )
    return summary


def beyond_floor_z(floor: str, attribute: dict[str, Any], limit: float) -> float:
    """How many standard errors the attribute lies beyond ``limit`` (one-sided; negative: within it).

    Adverse impact: H0 is p_least >= limit * p_most. Equal opportunity: H0 is the gap in decline
    rates among those who repaid <= limit. Unpooled normal approximation of the two proportions.
    """
    groups = attribute["groups"]
    if floor == "min_adverse_impact_ratio":
        low, high = groups[attribute["least_approved_group"]], groups[attribute["most_approved_group"]]
        p_low, n_low, p_high, n_high = low["approval_rate"], low["rows"], high["approval_rate"], high["rows"]
        excess, var = limit * p_high - p_low, limit**2 * p_high * (1 - p_high) / n_high + p_low * (1 - p_low) / n_low
    else:
        high = groups[attribute["most_declined_repaid_group"]]
        low = groups[attribute["least_declined_repaid_group"]]
        p_high, n_high = high["decline_rate_repaid"], high["repaid"]
        p_low, n_low = low["decline_rate_repaid"], low["repaid"]
        excess, var = p_high - p_low - limit, p_high * (1 - p_high) / n_high + p_low * (1 - p_low) / n_low
    if var > 0:
        return excess / math.sqrt(var)
    return math.copysign(math.inf, excess) if excess else 0.0


def proxy_auc(values: pd.Series, groups: pd.Series, min_rows: int, folds: int = 5) -> float:
    """How well one input alone tells the groups apart: macro one-vs-rest ROC-AUC of its per-value group shares.

    A numeric input is cut into quantile bins, a categorical one taken by value; each bin's share
    of each group, learnt on the other folds (out of fold, so 300 cities with a few rows each do not
    "predict" by memory), is the prediction. 0.5: it says nothing about the attribute; 1: it gives it
    away. Groups under ``min_rows`` rows (and unknown ones) are left out, as in the group tables.
    """
    counts = groups.value_counts()
    known = groups.isin([g for g, n in counts.items() if n >= min_rows and g != MISSING])
    values, groups = values[known].reset_index(drop=True), groups[known].reset_index(drop=True)
    if values.dtype.kind in "fiu":
        keys = pd.qcut(values.rank(method="first"), min(PROXY_BINS, values.nunique()), labels=False, duplicates="drop")
        keys = keys.where(values.notna(), -1).astype(str)
    else:
        keys = values.astype(object).where(values.notna(), MISSING).astype(str)
    classes = sorted(set(groups))
    if len(classes) < 2:
        return float("nan")
    fold = np.random.default_rng(0).permutation(len(keys)) % folds
    onehot = pd.get_dummies(groups)[classes].astype(float)
    predicted = pd.DataFrame(index=keys.index, columns=classes, dtype=float)
    for k in range(folds):
        fit, held = fold != k, fold == k
        shares = onehot[fit].groupby(keys[fit].to_numpy()).mean()
        looked_up = shares.reindex(keys[held].to_numpy())
        predicted.loc[held] = looked_up.fillna(onehot[fit].mean()).to_numpy()  # unseen value: the overall share
    aucs = [roc_auc_score(groups == c, predicted[c]) for c in classes]
    return float(np.mean(aucs)) if len(classes) > 2 else float(max(aucs[0], 1 - aucs[0]))


def fairness_report(test: pd.DataFrame, proba: np.ndarray, threshold: float, profile: Profile,
                    fairness: FairnessSettings) -> dict[str, Any]:
    """metrics/fairness.json: per protected attribute its group table, and the proxy screen."""
    y_true = test[profile.target_column].to_numpy()
    attributes: dict[str, Any] = {}
    proxies: list[dict[str, Any]] = []
    for name, spec in profile.protected.items():
        groups = groups_of(test[name], spec)
        attributes[name] = {"label": spec.label, **group_table(y_true, proba, threshold, groups,
                                                                fairness.min_group_rows)}
        for column in profile.features:
            if column == name:
                continue
            auc = proxy_auc(test[column], groups, fairness.min_group_rows)
            proxies.append({"input": column, "attribute": name, "auc": _clean(auc),
                            "flagged": bool(np.isfinite(auc) and auc > fairness.proxy_max_auc)})
    proxies.sort(key=lambda p: -(p["auc"] or 0))
    return {
        "dataset": profile.name,
        "threshold": round(float(threshold), 6),
        "rows": len(test),
        "protected": list(profile.protected),
        "protected_inputs": profile.protected_inputs,
        "attributes": attributes,
        "proxy_max_auc": fairness.proxy_max_auc,
        "proxies_flagged": [f"{p['input']} -> {p['attribute']}" for p in proxies if p["flagged"]],
        "proxies": proxies,
    }


EPSILON = 1e-9  # a figure exactly on a floor passes it


def fairness_verdict(report: dict[str, Any], profile: Profile, floors: FairnessFloors) -> dict[str, Any]:
    """The gate's fairness floors on this report: passed, warned (a ``warn`` floor failed), failed or not measured."""
    checks: list[dict[str, Any]] = []
    reasons: dict[str, list[str]] = {"block": [], "warn": []}
    critical = NormalDist().inv_cdf(1 - floors.significance)
    for name, attribute in report["attributes"].items():
        action = profile.protected[name].gate or floors.action
        air, gap = attribute.get("min_adverse_impact_ratio"), attribute.get("equal_opportunity_gap")
        pairs = (("min_adverse_impact_ratio", air, floors.min_adverse_impact_ratio,
                  air is not None and air >= floors.min_adverse_impact_ratio - EPSILON),
                 ("max_equal_opportunity_gap", gap, floors.max_equal_opportunity_gap,
                  gap is not None and gap <= floors.max_equal_opportunity_gap + EPSILON))
        for floor, value, limit, within in pairs:
            if value is None:
                continue  # fewer than two groups large enough to judge
            # beyond the limit, but by less than chance alone explains (small groups): reported, not held
            z = _clean(beyond_floor_z(floor, attribute, limit))
            significant = z is None or z >= critical
            passed = within or not significant
            checks.append({"attribute": name, "floor": floor, "value": value, "limit": limit, "action": action,
                           "z": z, "significant": significant, "passed": passed})
            if passed:
                continue
            what = (f"adverse-impact ratio {value:.3f} ({attribute['least_approved_group']} against "
                    f"{attribute['most_approved_group']}) is below" if floor.startswith("min") else
                    f"equal-opportunity gap {value:.3f} (decline rates among applicants who repaid) is above")
            z_text = "" if z is None else f", z = {z:.1f}"
            reasons[action].append(f"{name}: {what} gate.fairness.{floor} = {limit}{z_text} [{action}]")
    if not checks:
        verdict = "not measured"
    else:
        verdict = "failed" if reasons["block"] else "warned" if reasons["warn"] else "passed"
    return {"verdict": verdict, "blocking": reasons["block"], "warnings": reasons["warn"], "checks": checks}


def approval_plot_rows(report: dict[str, Any]) -> pd.DataFrame:
    """plots/approval_by_group.csv: one bar per attribute and group."""
    rows = [{"group": f"{name}: {group}", "approval_rate": figures["approval_rate"], "rows": figures["rows"]}
            for name, attribute in report["attributes"].items() for group, figures in attribute["groups"].items()]
    return pd.DataFrame(rows, columns=["group", "approval_rate", "rows"])


def run(settings: Settings) -> dict[str, Any]:
    profile = settings.profile
    pipeline, meta = load_trained(settings)
    test = read_table(settings.split_table("test"))
    missing = [c for c in profile.protected if c not in test.columns]
    if missing:
        raise PipelineError(f"the test split lacks protected column(s) {missing}: rerun validate and split "
                            "(dvc repro) so they are kept for measurement")
    proba = pipeline.predict_proba(test[meta["features"]])[:, 1]
    report = fairness_report(test, proba, float(meta["threshold"]), profile, settings.fairness)
    report["gate"] = fairness_verdict(report, profile, settings.gate.fairness)
    write_json(settings.fairness_file, report)
    plot = settings.paths.plots / "approval_by_group.csv"
    plot.parent.mkdir(parents=True, exist_ok=True)
    approval_plot_rows(report).to_csv(plot, index=False, float_format="%.6f")
    for name, attribute in report["attributes"].items():
        log.info("%s: adverse-impact ratio %s (least approved %s), equal-opportunity gap %s", name,
                 attribute.get("min_adverse_impact_ratio"), attribute.get("least_approved_group"),
                 attribute.get("equal_opportunity_gap"))
    if not profile.protected:
        log.info("%s holds no protected attribute: nothing to measure by group", profile.name)
    gate = report["gate"]
    problems = [*gate["blocking"], *gate["warnings"]]
    (log.warning if problems else log.info)("fairness floors: %s%s", gate["verdict"],
                                            "".join(f"; {r}" for r in problems))
    if report["proxies_flagged"]:
        log.warning("inputs that stand in for a protected attribute (ROC-AUC > %s): %s",
                    settings.fairness.proxy_max_auc, ", ".join(report["proxies_flagged"]))
    return report


def main() -> None:
    run(load_settings())


if __name__ == "__main__":
    run_main(main)
