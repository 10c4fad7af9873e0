"""Model-quality benchmark: our pipeline against the reference projects' models, same split.

For each real dataset the project's own code prepares the data exactly as ``dvc repro``
does (read_raw -> ingest -> validate -> split_frame, with a parquet round trip between
stages, params from params.yaml), so train/valid/test are the very rows the pipeline
uses. On that split it scores, on the TEST rows:

* ours         : ``train_model`` with the params.yaml settings (early-stopped on valid);
* lgbm-default : ``LGBMClassifier()`` with default parameters;
* rf-100       : ``RandomForestClassifier(n_estimators=100)``, as in the reference projects;
* xgb-ref      : the reference XGBoost (100 rounds, max_depth 5, eta 0.2, gamma 4,
                 min_child_weight 6, subsample 0.8, binary:logistic).

The reference models get the same encoded features as ours: the project's own
preprocessor (cross-fitted target encoding + ordinal encoding + numeric passthrough),
fitted on the train split. They train on train only and never see valid.

    python bench/model_quality.py                       # all real datasets, params.yaml seed
    python bench/model_quality.py --datasets credit_risk --seeds 3
    python bench/model_quality.py --params /tmp/candidate.yaml   # try other hyperparameters

Progress goes to stderr (logging); the Markdown tables go to stdout.
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import average_precision_score, roc_auc_score
from xgboost import XGBClassifier

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src.config import Settings, read_params, settings_from_dict  # noqa: E402
from src.data.ingest import ingest, read_raw  # noqa: E402
from src.data.split import split_frame  # noqa: E402
from src.data.validate import validate  # noqa: E402
from src.modeling.features import build_preprocessor  # noqa: E402
from src.modeling.metrics import ks_statistic  # noqa: E402
from src.modeling.train import predict_proba, train_model  # noqa: E402
from tests.conftest import REAL_DATASETS, shared_data_dir  # noqa: E402

log = logging.getLogger("bench.model_quality")

OURS = "ours"
REFERENCES = ("lgbm-default", "rf-100", "xgb-ref")
MODEL_NOTES = {
    OURS: "train_model(), params.yaml train.* (LightGBM, early-stopped on valid)",
    "lgbm-default": "LGBMClassifier() default params",
    "rf-100": "RandomForestClassifier(n_estimators=100, n_jobs=2)",
    "xgb-ref": "XGBClassifier(100 rounds, max_depth=5, eta=0.2, gamma=4, min_child_weight=6, subsample=0.8)",
}


@dataclass(frozen=True)
class Score:
    dataset: str
    split_seed: int
    model: str
    valid_auc: float
    test_auc: float
    test_pr_auc: float
    test_ks: float
    fit_seconds: float


def _roundtrip(df: pd.DataFrame) -> pd.DataFrame:
    """Write and read back parquet, as the pipeline does between stages (same dtypes)."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    buf.seek(0)
    return pd.read_parquet(buf)


def load_params(path: Path) -> dict[str, Any]:
    """The project's own params reader (YAML 1.2, as DVC reads the file)."""
    return read_params(path)


def make_settings(params: dict[str, Any], dataset: str, split_seed: int | None, train_seed: int | None) -> Settings:
    params = {**params, "dataset": dataset}
    if split_seed is not None:
        params["split"] = {**params["split"], "seed": split_seed}
    if train_seed is not None:
        params["train"] = {**params["train"], "seed": train_seed}
    # Paths are never written to: everything stays in memory.
    return settings_from_dict(params, ROOT)


def prepare_splits(settings: Settings, data_dir: Path) -> dict[str, pd.DataFrame]:
    """ingest -> validate -> split with the project's own functions, as ``dvc repro`` runs them."""
    profile = settings.profile
    src = profile.source
    path = data_dir / settings.dataset / src.file
    if not path.is_file():
        raise SystemExit(f"{path} not found (set SHARED_DATA or pass --data-dir)")
    if settings.ingest.sample_rows is not None:
        log.warning("params.yaml ingest.sample_rows = %s: figures are for a sample, not the full dataset",
                    settings.ingest.sample_rows)
    raw = read_raw(path, src.format, src.read_options)
    table = _roundtrip(ingest(raw, profile, settings.ingest.sample_rows, settings.ingest.sample_seed,
                              source=str(path)))
    clean = _roundtrip(validate(table, profile).clean)
    parts = split_frame(clean, profile.feature_names, profile.target_column, settings.split)
    return {name: _roundtrip(part) for name, part in parts.items()}


def _reference_models(seed: int) -> dict[str, Callable[[], Any]]:
    return {
        "lgbm-default": lambda: LGBMClassifier(verbose=-1),  # verbose only silences; all else default
        "rf-100": lambda: RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=2),
        "xgb-ref": lambda: XGBClassifier(
            n_estimators=100, max_depth=5, learning_rate=0.2, gamma=4, min_child_weight=6, subsample=0.8,
            objective="binary:logistic", random_state=seed, n_jobs=2,
        ),
    }


def _score(*, dataset: str, split_seed: int, model: str, y_valid: np.ndarray, p_valid: np.ndarray,
           y_test: np.ndarray, p_test: np.ndarray, seconds: float) -> Score:
    return Score(
        dataset=dataset, split_seed=split_seed, model=model,
        valid_auc=float(roc_auc_score(y_valid, p_valid)),
        test_auc=float(roc_auc_score(y_test, p_test)),
        test_pr_auc=float(average_precision_score(y_test, p_test)),
        test_ks=ks_statistic(y_test, p_test),
        fit_seconds=seconds,
    )


def evaluate_dataset(settings: Settings, data_dir: Path, with_references: bool = True) -> list[Score]:
    """Score ours (and the references) on one dataset and split seed."""
    profile = settings.profile
    features, target = profile.feature_names, profile.target_column
    seed = settings.split.seed
    parts = prepare_splits(settings, data_dir)
    train, valid, test = parts["train"], parts["valid"], parts["test"]
    y_valid, y_test = valid[target].to_numpy(), test[target].to_numpy()
    log.info("%s split seed %d: train %d / valid %d / test %d rows", settings.dataset, seed,
             len(train), len(valid), len(test))

    scores = []
    started = time.perf_counter()
    result = train_model(train, valid, settings)
    seconds = time.perf_counter() - started
    scores.append(_score(dataset=settings.dataset, split_seed=seed, model=OURS,
                         y_valid=y_valid, p_valid=predict_proba(result.pipeline, valid, features),
                         y_test=y_test, p_test=predict_proba(result.pipeline, test, features), seconds=seconds))
    log.info("  %-12s best iteration %d, valid AUC %.4f, test AUC %.4f (%.1f s)", OURS,
             result.meta["best_iteration"], scores[-1].valid_auc, scores[-1].test_auc, seconds)
    if not with_references:
        return scores

    # The same preprocessing as ours, fitted on train (fit_transform cross-fits the TargetEncoder).
    pre = build_preprocessor(profile, settings.train.target_encoder.model_dump(), settings.train.seed)
    x_train = pre.fit_transform(train[features], train[target])
    x_valid, x_test = pre.transform(valid[features]), pre.transform(test[features])
    for name, factory in _reference_models(settings.train.seed).items():
        model = factory()
        started = time.perf_counter()
        model.fit(x_train, train[target])
        seconds = time.perf_counter() - started
        scores.append(_score(dataset=settings.dataset, split_seed=seed, model=name,
                             y_valid=y_valid, p_valid=model.predict_proba(x_valid)[:, 1],
                             y_test=y_test, p_test=model.predict_proba(x_test)[:, 1], seconds=seconds))
        log.info("  %-12s valid AUC %.4f, test AUC %.4f (%.1f s)", name, scores[-1].valid_auc,
                 scores[-1].test_auc, seconds)
    return scores


def ours_beats_refs(scores: list[Score]) -> bool | None:
    ours = [s.test_auc for s in scores if s.model == OURS]
    refs = [s.test_auc for s in scores if s.model in REFERENCES]
    if not ours or not refs:
        return None
    return ours[0] >= max(refs)


def main_table(scores: list[Score]) -> str:
    lines = [
        "| dataset | model | valid ROC-AUC | test ROC-AUC | test PR-AUC | test KS | fit s | ours >= all refs |",
        "|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for dataset in dict.fromkeys(s.dataset for s in scores):
        rows = [s for s in scores if s.dataset == dataset]
        verdict = ours_beats_refs(rows)
        for s in rows:
            mark = ""
            if s.model == OURS and verdict is not None:
                mark = "yes" if verdict else "**no**"
            lines.append(f"| {dataset} | {s.model} | {s.valid_auc:.4f} | {s.test_auc:.4f} | {s.test_pr_auc:.4f} "
                         f"| {s.test_ks:.4f} | {s.fit_seconds:.1f} | {mark} |")
    return "\n".join(lines)


def seeds_table(scores: list[Score]) -> str:
    lines = [
        "| dataset | model | split seeds | test ROC-AUC mean | sd | min | max | valid ROC-AUC mean |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for dataset in dict.fromkeys(s.dataset for s in scores):
        for model in dict.fromkeys(s.model for s in scores if s.dataset == dataset):
            rows = [s for s in scores if s.dataset == dataset and s.model == model]
            aucs = [s.test_auc for s in rows]
            sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
            seeds = ", ".join(str(s.split_seed) for s in rows)
            lines.append(f"| {dataset} | {model} | {seeds} | {statistics.fmean(aucs):.4f} | {sd:.4f} "
                         f"| {min(aucs):.4f} | {max(aucs):.4f} | {statistics.fmean(s.valid_auc for s in rows):.4f} |")
    wins = []
    for dataset in dict.fromkeys(s.dataset for s in scores):
        seeds = dict.fromkeys(s.split_seed for s in scores if s.dataset == dataset)
        verdicts = [ours_beats_refs([s for s in scores if s.dataset == dataset and s.split_seed == seed])
                    for seed in seeds]
        counted = [v for v in verdicts if v is not None]
        if counted:
            wins.append(f"{dataset}: ours >= all refs on {sum(counted)} of {len(counted)} split seeds")
    return "\n".join(lines) + ("\n\n" + "; ".join(wins) + "." if wins else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(REAL_DATASETS), choices=list(REAL_DATASETS),
                        help="real datasets to score (risk_flag has no labelled file)")
    parser.add_argument("--seed", type=int, default=None,
                        help="split.seed, train.seed and the references' random_state (default: params.yaml)")
    parser.add_argument("--seeds", type=int, default=0, metavar="N",
                        help="also run every model on N further split seeds (seed+1 ... seed+N) to show variance")
    parser.add_argument("--no-refs-on-seeds", action="store_true",
                        help="with --seeds, run only our pipeline on the extra seeds (faster)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                        help="params file to take split/train settings from (default: the repo's params.yaml)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding <dataset>/<file> (default: $SHARED_DATA or ../shared/data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show LightGBM's per-iteration log")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    lightgbm.register_logger(logging.getLogger("lightgbm"))  # keep LightGBM's prints off stdout
    logging.getLogger("lightgbm").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("src").setLevel(logging.INFO if args.verbose else logging.WARNING)

    params = load_params(args.params)
    data_dir = (args.data_dir or shared_data_dir()).resolve()
    base_seed = args.seed if args.seed is not None else int(params["split"]["seed"])

    scores: list[Score] = []
    extra: list[Score] = []
    for dataset in args.datasets:
        settings = make_settings(params, dataset, args.seed, args.seed)
        scores += evaluate_dataset(settings, data_dir)
        for k in range(1, args.seeds + 1):
            seeded = make_settings(params, dataset, base_seed + k, args.seed)
            extra += evaluate_dataset(seeded, data_dir, with_references=not args.no_refs_on_seeds)

    lgbm = params["train"]["lgbm"]
    print(f"## Model quality on the pipeline's own split (split.seed {base_seed}, params: {args.params.name})\n")
    print(main_table(scores))
    print("\nAll models are scored on the same test rows. The references use the project's own preprocessor"
          " (cross-fitted TargetEncoder for the target_encode columns, OrdinalEncoder for other categoricals,"
          " numeric passthrough) fitted on the train split, so categorical handling is identical to ours;"
          " they train on train only. `ours` early-stops on valid, so its valid ROC-AUC is optimistic.")
    print("\n" + "\n".join(f"- `{m}`: {note}" for m, note in MODEL_NOTES.items()))
    print(f"- ours' LightGBM: learning_rate {lgbm.get('learning_rate')}, num_leaves {lgbm.get('num_leaves')},"
          f" min_child_samples {lgbm.get('min_child_samples')}, colsample_bytree {lgbm.get('colsample_bytree')},"
          f" reg_lambda {lgbm.get('reg_lambda')}, early_stopping_rounds {params['train']['early_stopping_rounds']}")
    if extra:
        print(f"\n## Variance over split seeds {base_seed} ... {base_seed + args.seeds}\n")
        print(seeds_table(scores + extra))


if __name__ == "__main__":
    main()
