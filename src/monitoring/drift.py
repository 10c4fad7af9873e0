"""``drift``: how far a batch of applicants (and its scores) moved from the training reference.

The reference is the current profile's train split and the model's scores on it;
the batch is a file/folder (scored by the batch scorer, or raw applicants we score
here) or a time window of the serving prediction log. Per feature and for the
score: PSI on the reference's bins and its band; the run is flagged when any of
them reaches ``monitoring.drift_flag_band``. Writes ``metrics/drift.json`` and an HTML
report drawn from the same numbers (drift_html), so the two always agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from src.common import read_table, write_json
from src.config import MonitoringSettings, Profile, Settings
from src.monitoring import drift_html
from src.monitoring import psi as psi_math
from src.monitoring.sources import SCORE_COLUMN, Batch, InputError, Model, check_scores

log = logging.getLogger(__name__)

BAND_ORDER = {band: i for i, band in enumerate(psi_math.BANDS)}


@dataclass(frozen=True)
class DriftResult:
    """The drift summary (what drift.json holds) and whether it is flagged."""

    summary: dict[str, Any]

    @property
    def flag(self) -> bool:
        return bool(self.summary["flag"])

    @property
    def drifted_features(self) -> list[str]:
        return list(self.summary["drifted_features"])


def compare(reference: pd.DataFrame, reference_scores: pd.Series, batch: pd.DataFrame, batch_scores: pd.Series,
            profile: Profile, cfg: MonitoringSettings) -> dict[str, Any]:
    """PSI and band per feature and for the score; drifted features and the flag. Pure: frames in, dict out."""
    if len(batch) == 0:
        raise InputError("the batch has no rows to compare")
    if len(batch) < cfg.drift_min_rows:
        log.warning("only %d batch row(s) (monitoring.drift_min_rows = %d): PSI will be noisy",
                    len(batch), cfg.drift_min_rows)
    features: dict[str, dict[str, Any]] = {}
    for name, spec in profile.features.items():
        if spec.is_categorical:
            result = psi_math.categorical_psi(reference[name], batch[name], spec.values, cfg.psi_epsilon)
        else:
            result = psi_math.numeric_psi(reference[name], batch[name], cfg.psi_bins, cfg.psi_epsilon)
        features[name] = _entry(result, spec.type, cfg)
    score = _entry(psi_math.numeric_psi(reference_scores, batch_scores, cfg.psi_bins, cfg.psi_epsilon), "score", cfg)
    threshold = BAND_ORDER[cfg.drift_flag_band]
    drifted = [n for n, f in features.items() if BAND_ORDER[f["band"]] >= threshold]
    score_drifted = BAND_ORDER[score["band"]] >= threshold
    return {
        "n_reference": len(reference),
        "n_batch": len(batch),
        "thresholds": {"moderate": cfg.psi_moderate, "significant": cfg.psi_significant,
                       "flag_band": cfg.drift_flag_band, "bins": cfg.psi_bins, "epsilon": cfg.psi_epsilon},
        "features": features,
        "score": score,
        "drifted_features": sorted(drifted, key=lambda n: -features[n]["psi"]),
        "score_drifted": score_drifted,
        "flag": bool(drifted) or score_drifted,
    }


def _entry(result: psi_math.PsiResult, kind: str, cfg: MonitoringSettings) -> dict[str, Any]:
    return {"type": kind, "psi": round(result.psi, 6),
            "band": psi_math.band(result.psi, cfg.psi_moderate, cfg.psi_significant), "bins": result.bins()}


def batch_scores(batch: Batch, model: Model) -> tuple[pd.Series, str]:
    """The batch's own scores when it has them (scored file, prediction log), else the model's."""
    if SCORE_COLUMN in batch.frame.columns:
        return check_scores(batch.frame, batch.source), "batch"
    log.info("%s has no '%s' column: scoring %d row(s) with %s v%s", batch.source, SCORE_COLUMN,
             len(batch.frame), model.name, model.version)
    return model.predict(batch.frame), "model"


def reference_frame(settings: Settings, model: Model) -> tuple[pd.DataFrame, pd.Series]:
    """The current profile's train split and the model's scores on it."""
    reference = read_table(settings.split_table("train"))
    return reference, model.predict(reference)


def run_drift(settings: Settings, batch: Batch, model: Model, output: Path, html: Path | None) -> DriftResult:
    """Compare ``batch`` with the model's training reference; write drift.json (and the HTML report)."""
    cfg = settings.monitoring
    reference, ref_scores = reference_frame(settings, model)
    scores, scored_by = batch_scores(batch, model)
    summary = compare(reference, ref_scores, batch.frame, scores, settings.profile, cfg)
    versions = (batch.frame["model_version"].astype(str).value_counts().to_dict()
                if "model_version" in batch.frame.columns else {})
    if versions and set(versions) != {model.version}:
        log.warning("batch was scored by model version(s) %s; the reference scores come from %s v%s",
                    ", ".join(sorted(versions)), model.name, model.version)
    header = {
        "dataset": settings.dataset,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": model.describe(),
        "batch": {"source": batch.source, "rows_in": batch.rows_in, "rows": len(batch.frame),
                  "rejected": batch.rejected, "rejected_reasons": batch.rejected_reasons,
                  "scores_from": scored_by, "model_versions": {str(k): int(v) for k, v in versions.items()}},
        "reference": {"source": str(settings.split_table("train")), "rows": len(reference)},
        "report": None,
    }
    summary = {**header, **summary}
    if html is not None:
        summary["report"] = str(html)
        drift_html.write(summary, html)
    write_json(output, summary)
    return DriftResult(summary)


def describe(result: DriftResult) -> str:
    """A few lines for the terminal: the flag, the drifted features, the score."""
    s = result.summary
    lines = [f"drift: {'FLAGGED' if result.flag else 'none'}  (batch {s['n_batch']} rows vs reference "
             f"{s['n_reference']}; flag band {s['thresholds']['flag_band']})"]
    for name in result.drifted_features:
        f = s["features"][name]
        lines.append(f"  {name:<24} PSI {f['psi']:.3f}  {f['band']}")
    lines.append(f"  {'score':<24} PSI {s['score']['psi']:.3f}  {s['score']['band']}")
    return "\n".join(lines)
