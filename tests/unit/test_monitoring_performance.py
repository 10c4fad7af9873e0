"""Performance monitoring on small SYNTHETIC scored rows: join counts, KS, band rates, calibration, decay."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.config import MonitoringSettings
from src.modeling.metrics import ks_statistic
from src.monitoring import performance as perf
from src.monitoring.sources import InputError
from tests.synthetic_monitoring import synthetic_scored

CFG = MonitoringSettings(performance_min_rows=50, max_auc_drop=0.05, calibration_bins=4)


def test_ks_is_the_largest_cdf_gap() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.3, 0.7, 0.8])
    # above 0.65: 2 of 3 defaulters, 0 of 3 others -> the largest gap between the two CDFs is 2/3
    assert ks_statistic(y, p) == pytest.approx(2 / 3)


def test_join_counts_reconcile_and_ids_match_across_types() -> None:
    scored, labels = synthetic_scored(100)
    labels = pd.concat([labels.iloc[10:], pd.DataFrame({"id": ["900", "901"], "default": [0, 1]})])
    table = perf.read_labels(labels, "id", "default", 1, "labels.csv")
    joined = perf.join_labels(scored, table, "scored.parquet")
    assert joined.counts == {"scored": 100, "labels": 92, "matched": 90, "scored_without_label": 10,
                             "labels_without_score": 2}
    assert joined.counts["matched"] + joined.counts["scored_without_label"] == joined.counts["scored"]
    assert joined.counts["matched"] + joined.counts["labels_without_score"] == joined.counts["labels"]
    assert perf.id_keys(pd.Series([17, 17.0, "17", " 17 "])).nunique() == 1


def test_band_rates_per_decision() -> None:
    frame = pd.DataFrame({"decision": ["approve"] * 6 + ["refer"] * 2 + ["decline"] * 2,
                          "label": [0, 0, 0, 0, 0, 1, 1, 0, 1, 1]})  # approve: 1/6, refer: 1/2, decline: 2/2
    bands = perf.band_rates(frame)
    assert bands["approve"] == {"rows": 6, "share": 0.6, "default_rate": round(1 / 6, 6)}
    assert bands["refer"] == {"rows": 2, "share": 0.2, "default_rate": 0.5}
    assert bands["decline"] == {"rows": 2, "share": 0.2, "default_rate": 1.0}
    empty = perf.band_rates(frame[frame["decision"] == "approve"])
    assert empty["decline"] == {"rows": 0, "share": 0.0, "default_rate": None}


def test_summary_metrics_calibration_and_periods() -> None:
    scored, labels = synthetic_scored()
    joined = perf.join_labels(scored, perf.read_labels(labels, "id", "default", 1, "labels"), "scored")
    body = perf.summarise(joined, {"roc_auc": 0.7, "source": "test"}, "week", CFG)
    overall = body["overall"]
    y, p = joined.frame["label"].to_numpy(), joined.frame["probability"].to_numpy()
    assert overall["ks"] == pytest.approx(ks_statistic(y, p), abs=1e-6)
    assert overall["approval_rate"] == overall["bands"]["approve"]["share"]
    assert sum(r["rows"] for r in overall["calibration"]) == len(y) and len(overall["calibration"]) == 4
    # calibrated by construction: observed rate follows the mean score bin by bin
    for row in overall["calibration"]:
        assert abs(row["observed_rate"] - row["mean_predicted"]) < 0.2
    assert [p["period"][:10] for p in body["periods"]] == ["2026-11-02", "2026-11-09", "2026-11-16"]
    assert sum(p["rows"] for p in body["periods"]) == len(y)
    assert body["decay"] is False and overall["decay_judged"] is True


def test_decay_is_flagged_when_auc_falls_below_reference_minus_tolerance() -> None:
    scored, labels = synthetic_scored()
    joined = perf.join_labels(scored, perf.read_labels(labels, "id", "default", 1, "labels"), "scored")
    auc = perf.summarise(joined, {"roc_auc": None}, None, CFG)["overall"]["roc_auc"]
    assert perf.summarise(joined, {"roc_auc": auc + 0.049}, None, CFG)["decay"] is False
    assert perf.summarise(joined, {"roc_auc": auc + 0.051}, None, CFG)["decay"] is True
    few = perf.join_labels(scored.head(40), perf.read_labels(labels, "id", "default", 1, "labels"), "scored")
    small = perf.summarise(few, {"roc_auc": 0.99}, None, CFG)  # 40 rows < performance_min_rows
    assert small["decay"] is False and small["overall"]["decay_judged"] is False


def test_bad_labels_and_duplicates_are_named() -> None:
    scored, labels = synthetic_scored(20)
    labels.loc[3, "default"] = 2
    with pytest.raises(InputError, match=r"'default' must hold 0/1.*row 3 \(2\)"):
        perf.read_labels(labels, "id", "default", 1, "labels.csv")
    dup = pd.DataFrame({"id": [1, 1, 2], "default": [0, 1, 0]})
    with pytest.raises(InputError, match=r"appear more than once.*1"):
        perf.read_labels(dup, "id", "default", 1, "labels.csv")
    with pytest.raises(InputError, match="missing column"):
        perf.read_labels(labels, "applicant", "default", 1, "labels.csv")
    table = perf.read_labels(pd.DataFrame({"id": [1000], "default": [1]}), "id", "default", 1, "labels.csv")
    with pytest.raises(InputError, match="no scored row has an outcome"):
        perf.summarise(perf.join_labels(scored, table, "scored"), {"roc_auc": 0.8}, None, CFG)
    bad = scored.assign(decision="maybe")
    with pytest.raises(InputError, match="decision"):
        perf.join_labels(bad, table, "scored")


def test_markdown_summary_mentions_decay_and_bands() -> None:
    scored, labels = synthetic_scored()
    joined = perf.join_labels(scored, perf.read_labels(labels, "id", "default", 1, "labels"), "scored")
    body = perf.summarise(joined, {"roc_auc": 0.99, "source": "test"}, "day", CFG)
    text = perf.markdown({"dataset": "x", "created_at": "now", "source": "s", "labels": "l", **body})
    assert "**DECAY**" in text and "| approve |" in text and "| day |" in text


def test_by_group_reports_each_groups_figures_per_period_and_its_approval_ratio() -> None:
    """--by: a group column of the outcomes file (SYNTHETIC: every third applicant in band "young", whose
    applications were declined; the rest keep theirs). Figures per group, overall and per week, match a
    hand count; the approval ratio is against the most approved group; a missing group is its own group."""
    scored, labels = synthetic_scored()
    labels = labels.assign(age_band=np.where(np.arange(len(labels)) % 3 == 0, "young", "older"))
    labels.loc[labels.index[1], "age_band"] = None
    young_ids = set(labels.loc[labels["age_band"] == "young", "id"].astype(str))
    scored = scored.copy()
    scored.loc[scored["id"].astype(str).isin(young_ids), "decision"] = "decline"
    table = perf.read_labels(labels, "id", "default", 1, "labels", by=("age_band",))
    joined = perf.join_labels(scored, table, "scored")
    body = perf.summarise(joined, {"roc_auc": 0.7, "source": "test"}, "week", CFG, by=("age_band",))
    groups = {g["group"]: g for g in body["by"]["age_band"]}
    assert set(groups) == {"young", "older", "missing"}
    merged = scored.assign(key=scored["id"].astype(str)).merge(
        labels.assign(key=labels["id"].astype(str)), on="key")
    for name in ("young", "older"):
        part = merged[merged["age_band"] == name]
        assert groups[name]["rows"] == len(part)
        assert groups[name]["approval_rate"] == round(float((part["decision"] == "approve").mean()), 6)
        assert groups[name]["default_rate"] == round(float(part["default"].mean()), 6)
        assert sum(p["rows"] for p in groups[name]["periods"]) == len(part)
    assert groups["young"]["approval_rate"] == 0 and groups["young"]["approval_ratio"] == 0
    assert groups["older"]["approval_ratio"] == 1.0
    assert groups["missing"]["rows"] == 1 and groups["missing"]["approval_ratio"] is None  # too few to compare
    assert "| young |" in perf.markdown({**body, "dataset": "x", "created_at": "t", "source": "s", "labels": "l"})
    with pytest.raises(InputError, match=r"missing column\(s\) sex \(named by --by\)"):
        perf.read_labels(labels, "id", "default", 1, "labels", by=("sex",))
