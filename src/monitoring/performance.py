"""``performance``: once outcomes arrive, how well do the served scores still rank and calibrate?

Scored rows (a batch-scorer file or a prediction-log window) are joined by id with
a labels file; unmatched rows on either side are counted, never silently dropped.
Reported: ROC-AUC, KS, Brier, a calibration table, applicants and defaults per
decision band (approve / refer / decline), the same per day/week/month, and a
decay flag when ROC-AUC falls more than ``monitoring.max_auc_drop`` below the
model's own test ROC-AUC. ``--by COLUMN`` (a group column carried in the outcomes file, e.g.
an age band or sex the lender holds apart from the application) adds the same figures per
group, overall and per period, with each group's approval rate against the most approved one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import brier_score_loss, roc_auc_score

from src import notify
from src.config import MonitoringSettings, Settings
from src.modeling.metrics import ks_statistic
from src.modeling.tracking import connect
from src.monitoring.sources import SCORE_COLUMN, InputError, check_scores, require_columns
from src.monitoring.stats import outcome_labels
from src.scoring.scorer import APPROVE, DECLINE, REFER

log = logging.getLogger(__name__)

DECISIONS = (APPROVE, REFER, DECLINE)
PERIODS = {"day": "D", "week": "W", "month": "M"}
LABEL = "label"
GROUP_PREFIX = "group:"  # the --by columns in the joined frame, kept apart from the scored file's own

@dataclass(frozen=True)
class Joined:
    """Scored rows that have an outcome, and how many on each side had none."""

    frame: pd.DataFrame  # id, probability, decision, [scored_at, model_version], label
    counts: dict[str, int]


def id_keys(ids: pd.Series) -> pd.Series:
    """Join keys that agree across CSV and Parquet: 17, 17.0 and '17' are one id."""
    numeric = pd.to_numeric(ids, errors="coerce")
    as_int = numeric.notna() & (numeric % 1 == 0)
    text = ids.astype("string").str.strip()
    return text.mask(as_int, numeric[as_int].astype("int64").astype("string")).astype(object)


def read_labels(frame: pd.DataFrame, id_column: str, label_column: str, positive: Any, source: str,
                by: tuple[str, ...] = ()) -> pd.DataFrame:
    """id and 0/1 label per row of a labels table (and the ``by`` group columns, as text; missing ones
    read "missing"); duplicate ids and bad labels are named by row."""
    require_columns(frame, [id_column, label_column, *by], source, " (named by --by)" if by else "")
    ids = id_keys(frame[id_column])
    raw = frame[label_column]
    valid, label = outcome_labels(raw, positive)
    bad = raw.isna() | ids.isna() | ~valid.fillna(False).astype(bool)
    if bad.any():
        rows = ", ".join(f"row {i} ({_plain(raw[i])!r})" for i in frame.index[bad][:5])
        raise InputError(f"{source}: column '{label_column}' must hold 0/1 outcomes and '{id_column}' an id; "
                         f"{int(bad.sum())} row(s) do not: {rows}{'...' if bad.sum() > 5 else ''}")
    duplicated = ids[ids.duplicated()].unique().tolist()
    if duplicated:
        raise InputError(f"{source}: {len(duplicated)} id(s) appear more than once in '{id_column}', e.g. "
                         f"{', '.join(map(str, duplicated[:5]))}")
    out = pd.DataFrame({"key": ids, LABEL: label.fillna(False).astype("int8")})
    for column in by:
        out[f"{GROUP_PREFIX}{column}"] = frame[column].astype("string").str.strip().fillna("missing").astype(object)
    return out


def _plain(value: Any) -> Any:
    """numpy scalars as plain Python values, so messages read 2, not np.int64(2)."""
    return value.item() if hasattr(value, "item") else value


def join_labels(scored: pd.DataFrame, labels: pd.DataFrame, source: str) -> Joined:
    """Inner join on id, counting scored rows without an outcome and outcomes without a scored row."""
    require_columns(scored, ["id", SCORE_COLUMN, "decision"], source)
    keys = id_keys(scored["id"])
    duplicated = keys[keys.duplicated()].unique().tolist()
    if duplicated:
        raise InputError(f"{source}: {len(duplicated)} id(s) were scored more than once, e.g. "
                         f"{', '.join(map(str, duplicated[:5]))}")
    unknown = sorted(set(scored["decision"].dropna().astype(str)) - set(DECISIONS))
    if unknown or scored["decision"].isna().any():
        raise InputError(f"{source}: column 'decision' must hold {', '.join(DECISIONS)}; found "
                         f"{', '.join(unknown) or 'missing values'}")
    scored = scored.assign(key=keys, **{SCORE_COLUMN: check_scores(scored, source)})
    merged = scored.merge(labels, on="key", how="inner", validate="one_to_one")
    counts = {"scored": len(scored), "labels": len(labels), "matched": len(merged),
              "scored_without_label": len(scored) - len(merged), "labels_without_score": len(labels) - len(merged)}
    log.info("joined %d scored row(s) with %d outcome(s): %d matched, %d scored without outcome, "
             "%d outcome(s) without a scored row", counts["scored"], counts["labels"], counts["matched"],
             counts["scored_without_label"], counts["labels_without_score"])
    return Joined(frame=merged.drop(columns="key"), counts=counts)


def calibration_table(y: np.ndarray, proba: np.ndarray, bins: int) -> list[dict[str, Any]]:
    """Quantile bins of the predicted probability: rows, mean predicted, observed default rate."""
    frame = pd.DataFrame({"y": y, "p": proba})
    frame["bin"] = pd.qcut(frame["p"], q=bins, duplicates="drop")
    table = frame.groupby("bin", observed=True).agg(rows=("y", "size"), mean_predicted=("p", "mean"),
                                                    observed_rate=("y", "mean"))
    return [{"bin": str(idx), "rows": int(r.rows), "mean_predicted": round(float(r.mean_predicted), 6),
             "observed_rate": round(float(r.observed_rate), 6)} for idx, r in table.iterrows()]


def band_rates(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per decision band: rows, share of all rows, observed default rate (None for an empty band)."""
    total = len(frame)
    out = {}
    for decision in DECISIONS:
        part = frame.loc[frame["decision"] == decision, LABEL]
        out[decision] = {"rows": len(part), "share": round(len(part) / total, 6) if total else None,
                         "default_rate": round(float(part.mean()), 6) if len(part) else None}
    return out


def scores_summary(frame: pd.DataFrame, reference_auc: float | None, cfg: MonitoringSettings,
                   with_calibration: bool) -> dict[str, Any]:
    """Metrics of one labelled set; ROC-AUC/KS are None when only one outcome is present."""
    y = frame[LABEL].to_numpy()
    proba = frame[SCORE_COLUMN].to_numpy()
    both = len(np.unique(y)) == 2
    auc = float(roc_auc_score(y, proba)) if both else None
    bands = band_rates(frame)
    out: dict[str, Any] = {
        "rows": len(frame),
        "default_rate": round(float(y.mean()), 6),
        "mean_probability": round(float(proba.mean()), 6),
        "roc_auc": None if auc is None else round(auc, 6),
        "ks": round(ks_statistic(y, proba), 6) if both else None,
        "brier": round(float(brier_score_loss(y, proba, labels=[0, 1])), 6),
        "approval_rate": bands[APPROVE]["share"],
        "bands": bands,
    }
    judged = auc is not None and reference_auc is not None and len(frame) >= cfg.performance_min_rows
    out["decay"] = bool(judged and auc < reference_auc - cfg.max_auc_drop)
    out["decay_judged"] = bool(judged)
    if with_calibration:
        out["calibration"] = calibration_table(y, proba, cfg.calibration_bins)
    return out


def period_table(frame: pd.DataFrame, period: str, reference_auc: float | None,
                 cfg: MonitoringSettings) -> list[dict[str, Any]]:
    """The same metrics for each day / week / month of scoring time."""
    require_columns(frame, ["scored_at"], "scored rows", " (needed for --period)")
    times = pd.to_datetime(frame["scored_at"], utc=True, errors="coerce")
    if times.isna().any():
        rows = ", ".join(str(i) for i in frame.index[times.isna()][:5])
        raise InputError(f"column 'scored_at' holds {int(times.isna().sum())} value(s) that are not times "
                         f"(rows {rows})")
    keys = times.dt.tz_localize(None).dt.to_period(PERIODS[period])
    return [{"period": str(key), **scores_summary(part, reference_auc, cfg, with_calibration=False)}
            for key, part in frame.groupby(keys, sort=True)]


def group_tables(frame: pd.DataFrame, by: tuple[str, ...], period: str | None, reference_auc: float | None,
                 cfg: MonitoringSettings) -> dict[str, list[dict[str, Any]]]:
    """Per --by column: each group's figures (overall, and per period), and its approval rate's ratio to the
    most approved group's (the four-fifths rule; groups under monitoring.performance_min_rows not compared)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for column in by:
        rows = []
        for group, part in frame.groupby(f"{GROUP_PREFIX}{column}", sort=True):
            entry = {"group": str(group), **scores_summary(part, reference_auc, cfg, with_calibration=False)}
            if period:
                entry["periods"] = period_table(part, period, reference_auc, cfg)
            rows.append(entry)
        judged = [r for r in rows if r["rows"] >= cfg.performance_min_rows and r["group"] != "missing"]
        best = max((r["approval_rate"] or 0.0 for r in judged), default=0.0)
        for r in rows:
            ratio = (r["approval_rate"] or 0.0) / best if r in judged and best > 0 else None
            r["approval_ratio"] = None if ratio is None else round(ratio, 6)
        out[column] = rows
    return out


def summarise(joined: Joined, reference: dict[str, Any], period: str | None, cfg: MonitoringSettings,
              by: tuple[str, ...] = ()) -> dict[str, Any]:
    """performance.json's body: overall metrics, calibration, bands, periods, decay against the reference."""
    if joined.counts["matched"] == 0:
        raise InputError(f"no scored row has an outcome in the labels file (scored {joined.counts['scored']}, "
                         f"labels {joined.counts['labels']}): check --id-column and that the ids are the same")
    if joined.frame[LABEL].nunique() < 2:
        log.warning("all %d matched outcomes are %d: ROC-AUC and KS are undefined", joined.counts["matched"],
                    int(joined.frame[LABEL].iloc[0]))
    reference_auc = reference.get("roc_auc")
    overall = scores_summary(joined.frame, reference_auc, cfg, with_calibration=True)
    if not overall["decay_judged"]:
        log.warning("decay not judged: %s", "no reference ROC-AUC" if reference_auc is None else
                    f"{overall['rows']} labelled row(s), fewer than monitoring.performance_min_rows "
                    f"({cfg.performance_min_rows}), or a single outcome")
    periods = period_table(joined.frame, period, reference_auc, cfg) if period else []
    return {
        "counts": joined.counts,
        "reference": reference,
        "tolerance": {"max_auc_drop": cfg.max_auc_drop, "min_rows": cfg.performance_min_rows},
        "overall": overall,
        "period": period,
        "periods": periods,
        "by": group_tables(joined.frame, by, period, reference_auc, cfg),
        "decay": overall["decay"],
    }


def reference_metrics(settings: Settings, model_name: str | None, model_version: str | None,
                      override_auc: float | None) -> dict[str, Any]:
    """The model's test ROC-AUC: --reference-auc, else the registered version's run, else metrics/test.json."""
    if override_auc is not None:
        return {"roc_auc": float(override_auc), "source": "--reference-auc"}
    if model_name and model_version and model_version.isdigit():
        try:
            return _registry_reference(settings, model_name, model_version)
        except Exception as exc:  # registry down or version gone: fall back to the workspace's test metrics
            log.warning("no test metrics from the registry for %s v%s (%s); trying metrics/test.json",
                        model_name, model_version, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    path = settings.paths.metrics / "test.json"
    if path.exists():
        test = json.loads(path.read_text(encoding="utf-8"))
        if test.get("dataset") == settings.dataset and "roc_auc" in test:
            return {"roc_auc": float(test["roc_auc"]), "ks": test.get("ks"), "brier": test.get("brier"),
                    "source": str(path)}
    log.warning("no reference ROC-AUC (registry, %s); pass --reference-auc to judge decay", path)
    return {"roc_auc": None, "source": None}


def _registry_reference(settings: Settings, name: str, version: str) -> dict[str, Any]:
    connect(settings)
    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    metrics = client.get_run(run_id).data.metrics
    if "test.roc_auc" not in metrics:
        raise KeyError(f"run {run_id} logged no test.roc_auc")
    return {"roc_auc": metrics["test.roc_auc"], "ks": metrics.get("test.ks"), "brier": metrics.get("test.brier"),
            "source": f"models:/{name}/{version} (run {run_id})"}


def model_identity(scored: pd.DataFrame) -> tuple[str | None, str | None]:
    """The model (name, version) that scored most of the rows, when the file says."""
    if "model_version" not in scored.columns or scored.empty:
        return None, None
    version = str(scored["model_version"].astype(str).value_counts().index[0])
    name = None
    if "model_name" in scored.columns:
        names = scored.loc[scored["model_version"].astype(str) == version, "model_name"].astype(str)
        name = str(names.value_counts().index[0])
    if scored["model_version"].astype(str).nunique() > 1:
        log.warning("rows were scored by several model versions; the reference is version %s's", version)
    return name, version


def run_performance(settings: Settings, scored: pd.DataFrame, source: str, labels: pd.DataFrame,
                    labels_source: str, id_column: str, label_column: str, period: str | None,
                    reference_auc: float | None, by: tuple[str, ...] = ()) -> dict[str, Any]:
    """Join, measure and judge; returns performance.json's content (the caller writes it)."""
    profile = settings.profile
    label_table = read_labels(labels, id_column, label_column, profile.positive, labels_source, by)
    joined = join_labels(scored, label_table, source)
    name, version = model_identity(scored)
    reference = reference_metrics(settings, name, version, reference_auc)
    body = summarise(joined, reference, period, settings.monitoring, by)
    return {"dataset": settings.dataset, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source, "labels": labels_source, "model": {"name": name, "version": version}, **body}


def markdown(summary: dict[str, Any]) -> str:
    """A short human summary of performance.json."""
    o, ref = summary["overall"], summary["reference"]
    c = summary["counts"]

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = [
        f"# Model performance on outcomes: {summary['dataset']}",
        "",
        f"*{summary['created_at']}; scored rows from {summary['source']}, outcomes from {summary['labels']}.*",
        "",
        f"- Matched {c['matched']} of {c['scored']} scored rows ({c['scored_without_label']} without outcome yet); "
        f"{c['labels_without_score']} outcome(s) had no scored row.",
        f"- ROC-AUC **{fmt(o['roc_auc'])}** (model's test ROC-AUC {fmt(ref.get('roc_auc'))}, tolerance "
        f"{summary['tolerance']['max_auc_drop']}): **{'DECAY' if summary['decay'] else 'no decay'}**"
        f"{'' if o['decay_judged'] else ' (not judged: too few rows or no reference)'}.",
        f"- KS {fmt(o['ks'])}, Brier {fmt(o['brier'])}, default rate {fmt(o['default_rate'])}, "
        f"approval rate {fmt(o['approval_rate'])}.",
        "",
        "| band | rows | share | default rate |",
        "|---|---|---|---|",
        *(f"| {b} | {v['rows']} | {fmt(v['share'])} | {fmt(v['default_rate'])} |" for b, v in o["bands"].items()),
        "",
        "| calibration bin | rows | mean predicted | observed |",
        "|---|---|---|---|",
        *(f"| {r['bin']} | {r['rows']} | {r['mean_predicted']:.4f} | {r['observed_rate']:.4f} |"
          for r in o["calibration"]),
    ]
    if summary["periods"]:
        lines += ["", f"| {summary['period']} | rows | ROC-AUC | KS | approval rate | default rate | decay |",
                  "|---|---|---|---|---|---|---|",
                  *(f"| {p['period']} | {p['rows']} | {fmt(p['roc_auc'])} | {fmt(p['ks'])} | "
                    f"{fmt(p['approval_rate'])} | {fmt(p['default_rate'])} | {'yes' if p['decay'] else 'no'} |"
                    for p in summary["periods"])]
    for column, groups in (summary.get("by") or {}).items():
        lines += ["", f"| {column} | rows | approval rate | vs most approved | default rate | ROC-AUC |",
                  "|---|---|---|---|---|---|",
                  *(f"| {g['group']} | {g['rows']} | {fmt(g['approval_rate'])} | {fmt(g['approval_ratio'])} | "
                    f"{fmt(g['default_rate'])} | {fmt(g['roc_auc'])} |" for g in groups)]
    return "\n".join(lines) + "\n"


def write_markdown(summary: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(summary), encoding="utf-8")
    return path


def decay_event(summary: dict[str, Any], settings: Settings, source: str, where: list[str]) -> notify.Event:
    """The notification for decay found on matured outcomes: the ROC-AUC against the model's, where to look."""
    o = summary["overall"]
    return notify.Event(
        "performance_decay", "critical", f"Model decay on {settings.dataset}: ROC-AUC {o['roc_auc']}",
        f"On {summary['counts']['matched']} scored rows with matured outcomes from {source}, ROC-AUC is "
        f"{o['roc_auc']} against the model's test ROC-AUC {summary['reference']['roc_auc']} (allowed drop "
        f"monitoring.max_auc_drop = {settings.monitoring.max_auc_drop}). Consider `make retrain`.",
        where=where, details={"roc_auc": o["roc_auc"], "reference_roc_auc": summary["reference"]["roc_auc"],
                              "matched": summary["counts"]["matched"]}, dataset=settings.dataset)
