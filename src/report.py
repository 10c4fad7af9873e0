"""``python -m src.report``: a short, human summary of the last pipeline run.

Reads the small metric files the pipeline writes (no model loading), so it is
instant and safe to call at the end of ``make run``.
"""

from __future__ import annotations

import json
import sys

from src.common import PipelineError, run_main
from src.config import load_settings

TEST_KEYS = ("roc_auc", "pr_auc", "ks", "gini", "brier", "ece", "log_loss", "threshold",
             "precision", "recall", "f1", "approval_rate", "default_rate_approved")


def render(quality: dict, test: dict, meta: dict) -> str:
    lines = [
        f"dataset        {test['dataset']}",
        f"rows           in {quality['rows_in']}, accepted {quality['accepted']}, "
        f"quarantined {quality['rejected']} ({100 * quality['reject_share']:.2f} %)",
    ]
    lines += [f"  {reason}: {count}" for reason, count in quality["rejected_per_reason"].items()]
    lines.append(f"model          LightGBM, {meta['best_iteration']} trees")
    lines.append(f"test ({test['rows']} rows)")
    lines += [f"  {key:<22} {test[key]:.4f}" for key in TEST_KEYS]
    return "\n".join(lines)


def main() -> None:
    settings = load_settings()
    files = {
        "quality": settings.paths.metrics / "data_quality.json",
        "test": settings.paths.metrics / "test.json",
        "meta": settings.model_meta_file,
    }
    missing = [str(p.relative_to(settings.paths.root)) for p in files.values() if not p.exists()]
    if missing:
        raise PipelineError(f"no results yet ({', '.join(missing)} missing): run `dvc repro` first")
    loaded = {name: json.loads(path.read_text(encoding="utf-8")) for name, path in files.items()}
    sys.stdout.write(render(**loaded) + "\n")


if __name__ == "__main__":
    run_main(main)
