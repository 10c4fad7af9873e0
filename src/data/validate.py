"""Stage 2, validate: raw table -> clean table + quarantined rows + data-quality metrics.

Every raw row ends up in exactly one of ``clean.parquet`` or ``rejected.parquet``
(with every reason it was rejected for), and ``metrics/data_quality.json`` says
how many went where, so the counts always reconcile. The stage fails when the
reject share exceeds ``validate.max_reject_share``: past that, the file is
probably not what the profile describes and training on the rest would mislead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from src.common import PipelineError, read_table, run_main, write_json, write_table
from src.config import Profile, Settings, load_settings
from src.data.schemas import (
    REASON_COLUMN,
    ROW_COLUMN,
    build_schema,
    combine_failures,
    normalise,
    reason_texts,
    schema_failures,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class ValidationResult:
    clean: pd.DataFrame
    rejected: pd.DataFrame
    report: dict[str, Any]


def validate(raw: pd.DataFrame, profile: Profile) -> ValidationResult:
    """Split ``raw`` into clean rows (typed, target as 0/1) and rejected rows with reasons."""
    raw = raw.reset_index(drop=True)
    typed, type_failures = normalise(raw, profile, with_protected=True)
    failures = combine_failures(type_failures, schema_failures(typed, build_schema(profile, with_protected=True)))

    bad_rows = pd.Index(sorted(failures["index"].unique()))
    reasons = reason_texts(failures)

    rejected = raw.loc[bad_rows].copy()
    rejected.insert(0, ROW_COLUMN, bad_rows.to_numpy())
    rejected[REASON_COLUMN] = reasons.reindex(bad_rows).to_numpy()

    keep = [c for c in [profile.id_column, *profile.measured_columns, profile.target_column] if c]
    clean = typed.drop(index=bad_rows)[keep].copy()
    clean[profile.target_column] = (clean[profile.target_column] == float(profile.positive)).astype("int8")
    clean = clean.reset_index(drop=True)

    rows_in = len(raw)
    if len(clean) + len(rejected) != rows_in:  # guarded invariant, cheap to keep
        raise AssertionError(f"row counts do not reconcile: {rows_in} != {len(clean)} + {len(rejected)}")
    per_reason = failures.groupby("reason_key")["index"].nunique().sort_values(ascending=False)
    report = {
        "dataset": profile.name,
        "rows_in": rows_in,
        "accepted": len(clean),
        "rejected": len(rejected),
        "reject_share": round(len(rejected) / rows_in, 6) if rows_in else 0.0,
        "rejected_per_reason": {k: int(v) for k, v in per_reason.items()},
        "default_rate": round(float(clean[profile.target_column].mean()), 6) if len(clean) else None,
        "missing_values": {c: int(n) for c, n in clean[profile.feature_names].isna().sum().items() if n},
    }
    return ValidationResult(clean=clean, rejected=rejected, report=report)


def _log_report(result: ValidationResult, examples: int) -> None:
    rep = result.report
    log.info("rows in %d: accepted %d, rejected %d (%.2f %%)", rep["rows_in"], rep["accepted"],
             rep["rejected"], 100 * rep["reject_share"])
    for key, count in rep["rejected_per_reason"].items():
        sample = result.rejected.loc[result.rejected[REASON_COLUMN].str.contains(key, regex=False), ROW_COLUMN]
        log.info("  %-45s %6d rows (e.g. raw rows %s)", key, count, ", ".join(map(str, sample.head(examples))))


def run(settings: Settings) -> ValidationResult:
    raw = read_table(settings.raw_table)
    result = validate(raw, settings.profile)
    _log_report(result, settings.validate.log_examples)
    write_table(result.clean, settings.clean_table)
    write_table(result.rejected, settings.rejected_table)
    limit = settings.validate.max_reject_share
    report = {**result.report, "max_reject_share": limit, "passed": result.report["reject_share"] <= limit}
    write_json(settings.paths.metrics / "data_quality.json", report)
    if not report["passed"]:
        raise PipelineError(
            f"{result.report['rejected']} of {result.report['rows_in']} rows "
            f"({100 * result.report['reject_share']:.1f} %) failed validation, above validate.max_reject_share = "
            f"{100 * limit:.1f} %. Top reasons: {dict(list(result.report['rejected_per_reason'].items())[:3])}. "
            f"Rejected rows with reasons: {settings.rejected_table.relative_to(settings.paths.root)}"
        )
    classes = result.clean[settings.profile.target_column].nunique()
    if classes < 2:
        raise PipelineError(f"the clean table has {classes} target class(es); a default model needs both")
    return result


def main() -> None:
    run(load_settings())


if __name__ == "__main__":
    run_main(main)
