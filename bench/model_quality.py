"""Model-quality benchmark: our pipeline against strong and weak reference models, same splits.

For each labelled real dataset the project's own code prepares the data exactly as ``dvc repro``
does (read_raw -> ingest -> validate -> split_frame, with a parquet round trip between stages,
params from params.yaml), so train/valid/test are the very rows the pipeline uses. On every
split seed (five by default) it scores, on the TEST rows:

* ours         : ``train_model`` with the params.yaml settings, exactly as the train stage runs it;
* catboost     : CatBoost with its native categorical handling, early-stopped on valid;
* lgbm-native  : LightGBM with native categoricals (pandas category dtype), early-stopped on valid;
* lgbm-default : ``LGBMClassifier()`` with default parameters, on our encodings, train only;
* rf-100       : ``RandomForestClassifier(n_estimators=100)``, as in the reference projects;
* xgb-ref      : the reference projects' XGBoost (100 rounds, max_depth 5, eta 0.2, gamma 4,
                 min_child_weight 6, subsample 0.8), on our encodings.

The two strong references take the same inputs as ours (the profile's features; protected
attributes are no model's input) raw, the way a tabular practitioner would feed them; the three
weak ones get our encodings (cross-fitted TargetEncoder, OrdinalEncoder, numeric passthrough).
It reports mean +- sd of test ROC-AUC, PR-AUC, KS, Brier and expected calibration error, and says
per dataset whether ours is at least as good as the best reference on mean test ROC-AUC.

    python bench/model_quality.py                         # 3 datasets x 10 split seeds x 6 models
    python bench/model_quality.py --datasets credit_risk --seeds 3
    python bench/model_quality.py --judge --params /tmp/candidate.yaml   # judge a candidate, test unused

Choices (params) are judged with ``--judge`` only: the validation split is scored as if it were the
test split, train is cut again into train and valid, and the test rows are never read.
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
from catboost import CatBoostClassifier
from lightgbm import LGBMClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from xgboost import XGBClassifier

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src.config import Profile, Settings, read_params, settings_from_dict  # noqa: E402
from src.data.ingest import ingest, read_raw  # noqa: E402
from src.data.split import group_folds, split_frame  # noqa: E402
from src.data.validate import validate  # noqa: E402
from src.modeling.features import build_preprocessor  # noqa: E402
from src.modeling.metrics import expected_calibration_error, ks_statistic  # noqa: E402
from src.modeling.train import predict_proba, train_model  # noqa: E402
from tests.conftest import REAL_DATASETS, shared_data_dir  # noqa: E402

log = logging.getLogger("bench.model_quality")

OURS = "ours"
STRONG = ("catboost", "lgbm-native")
WEAK = ("lgbm-default", "rf-100", "xgb-ref")
REFERENCES = (*STRONG, *WEAK)
MODELS = (OURS, *REFERENCES)
EARLY_STOPPING = 200  # rounds without a better validation ROC-AUC, for both strong references
MODEL_NOTES = {
    OURS: "train_model(), params.yaml train.* (LightGBM, the profile's encodings and risk directions)",
    "catboost": f"CatBoostClassifier(learning_rate=0.05, depth 6, native categoricals), best of up to 5000 "
                f"rounds on valid ROC-AUC ({EARLY_STOPPING} patience)",
    "lgbm-native": f"LGBMClassifier(learning_rate=0.05, otherwise defaults, categoricals as pandas categories), "
                   f"best of up to 5000 rounds on valid ROC-AUC ({EARLY_STOPPING} patience)",
    "lgbm-default": "LGBMClassifier() default params, our encodings, train only",
    "rf-100": "RandomForestClassifier(n_estimators=100, n_jobs=2), our encodings, train only",
    "xgb-ref": "XGBClassifier(100 rounds, max_depth=5, eta=0.2, gamma=4, min_child_weight=6, subsample=0.8), "
               "our encodings, train only",
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
    test_brier: float
    test_ece: float
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


def _weak_models(seed: int) -> dict[str, Callable[[], Any]]:
    return {
        "lgbm-default": lambda: LGBMClassifier(verbose=-1),  # verbose only silences; all else default
        "rf-100": lambda: RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=2),
        "xgb-ref": lambda: XGBClassifier(
            n_estimators=100, max_depth=5, learning_rate=0.2, gamma=4, min_child_weight=6, subsample=0.8,
            objective="binary:logistic", random_state=seed, n_jobs=2,
        ),
    }


def _raw_inputs(profile: Profile, frames: list[pd.DataFrame]) -> tuple[list[pd.DataFrame], list[str]]:
    """The profile's features as a practitioner would feed them: numbers as float, categories as strings."""
    categorical = [n for n, f in profile.features.items() if f.is_categorical]
    out = []
    for frame in frames:
        x = pd.DataFrame(index=frame.index)
        for name in profile.feature_names:
            if name in categorical:
                x[name] = frame[name].astype(object).where(frame[name].notna(), None).map(
                    lambda v: "NA" if v is None else str(v))
            else:
                x[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        out.append(x)
    return out, categorical


def _fit_catboost(profile: Profile, seed: int, train: pd.DataFrame, valid: pd.DataFrame,
                  test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    target = profile.target_column
    (x_train, x_valid, x_test), categorical = _raw_inputs(profile, [train, valid, test])
    model = CatBoostClassifier(iterations=5000, learning_rate=0.05, eval_metric="AUC", random_seed=seed,
                               thread_count=2, early_stopping_rounds=EARLY_STOPPING, use_best_model=True,
                               cat_features=categorical, verbose=False, allow_writing_files=False)
    model.fit(x_train, train[target], eval_set=(x_valid, valid[target]))
    return model.predict_proba(x_valid)[:, 1], model.predict_proba(x_test)[:, 1]


def _fit_lgbm_native(profile: Profile, seed: int, train: pd.DataFrame, valid: pd.DataFrame,
                     test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    target = profile.target_column
    (x_train, x_valid, x_test), categorical = _raw_inputs(profile, [train, valid, test])
    for name in categorical:
        levels = sorted(x_train[name].unique())
        for x in (x_train, x_valid, x_test):
            x[name] = pd.Categorical(x[name], categories=levels)
    model = LGBMClassifier(n_estimators=5000, learning_rate=0.05, random_state=seed, n_jobs=2, verbose=-1)
    model.fit(x_train, train[target], eval_set=[(x_valid, valid[target])], eval_metric="auc",
              categorical_feature=categorical or "auto",
              callbacks=[lightgbm.early_stopping(EARLY_STOPPING, first_metric_only=True, verbose=False)])
    return model.predict_proba(x_valid)[:, 1], model.predict_proba(x_test)[:, 1]


STRONG_FITS = {"catboost": _fit_catboost, "lgbm-native": _fit_lgbm_native}


def _score(*, dataset: str, split_seed: int, model: str, valid_auc: float, y_test: np.ndarray,
           p_test: np.ndarray, seconds: float) -> Score:
    return Score(
        dataset=dataset, split_seed=split_seed, model=model, valid_auc=valid_auc,
        test_auc=float(roc_auc_score(y_test, p_test)),
        test_pr_auc=float(average_precision_score(y_test, p_test)),
        test_ks=ks_statistic(y_test, p_test),
        test_brier=float(brier_score_loss(y_test, p_test)),
        test_ece=expected_calibration_error(y_test, p_test),
        fit_seconds=seconds,
    )


def judging_splits(parts: dict[str, pd.DataFrame], settings: Settings) -> dict[str, pd.DataFrame]:
    """For judging choices: the validation split plays the test split, and train is cut again into
    train and valid in the pipeline's proportions. The test rows are not used at all."""
    profile = settings.profile
    folds = max(2, round((1 - settings.split.test_size) / settings.split.valid_size))
    fit_rows, held_rows = group_folds(parts["train"], profile.feature_names, profile.target_column, folds,
                                      settings.split.seed)[0]
    return {"train": parts["train"].iloc[fit_rows].reset_index(drop=True),
            "valid": parts["train"].iloc[held_rows].reset_index(drop=True), "test": parts["valid"]}


def evaluate_dataset(settings: Settings, data_dir: Path, models: tuple[str, ...] = MODELS,
                     judge: bool = False) -> list[Score]:
    """Score the chosen models on one dataset and split seed (with ``judge``, on its validation split)."""
    profile = settings.profile
    features, target = profile.feature_names, profile.target_column
    seed = settings.split.seed
    parts = prepare_splits(settings, data_dir)
    if judge:
        parts = judging_splits(parts, settings)
    train, valid, test = parts["train"], parts["valid"], parts["test"]
    y_valid, y_test = valid[target].to_numpy(), test[target].to_numpy()
    log.info("%s split seed %d: train %d / valid %d / test %d rows", settings.dataset, seed,
             len(train), len(valid), len(test))
    common = {"dataset": settings.dataset, "split_seed": seed, "y_test": y_test}
    scores = []

    def done(model: str, started: float) -> None:
        log.info("  %-12s valid ROC-AUC %.4f, test ROC-AUC %.4f (%.1f s)", model, scores[-1].valid_auc,
                 scores[-1].test_auc, time.perf_counter() - started)

    if OURS in models:
        started = time.perf_counter()
        result = train_model(train, valid, settings)
        seconds = time.perf_counter() - started
        scores.append(_score(**common, model=OURS, valid_auc=float(result.meta["valid_metrics"]["roc_auc"]),
                             p_test=predict_proba(result.pipeline, test, features), seconds=seconds))
        done(OURS, started)

    for name in STRONG:
        if name in models:
            started = time.perf_counter()
            p_valid, p_test = STRONG_FITS[name](profile, settings.train.seed, train, valid, test)
            scores.append(_score(**common, model=name, valid_auc=float(roc_auc_score(y_valid, p_valid)),
                                 p_test=p_test, seconds=time.perf_counter() - started))
            done(name, started)

    weak = {name: factory for name, factory in _weak_models(settings.train.seed).items() if name in models}
    if weak:
        # The same preprocessing as ours, fitted on train (fit_transform cross-fits the TargetEncoder).
        pre = build_preprocessor(profile, settings.train.target_encoder.model_dump(), settings.train.seed)
        x_train = pre.fit_transform(train[features], train[target])
        x_valid, x_test = pre.transform(valid[features]), pre.transform(test[features])
        for name, factory in weak.items():
            started = time.perf_counter()
            model = factory()
            model.fit(x_train, train[target])
            seconds = time.perf_counter() - started
            scores.append(_score(**common, model=name,
                                 valid_auc=float(roc_auc_score(y_valid, model.predict_proba(x_valid)[:, 1])),
                                 p_test=model.predict_proba(x_test)[:, 1], seconds=seconds))
            done(name, started)
    return scores


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def verdict(scores: list[Score], dataset: str) -> str | None:
    """Whether ours is at least as good as the best reference on mean test ROC-AUC, in words, with the
    paired difference's standard error over the split seeds (how much of the gap the splits alone explain)."""
    rows = [s for s in scores if s.dataset == dataset]
    by_model: dict[str, dict[int, float]] = {}
    for s in rows:
        by_model.setdefault(s.model, {})[s.split_seed] = s.test_auc
    means = {m: statistics.fmean(v.values()) for m, v in by_model.items()}
    refs = {m: v for m, v in means.items() if m in REFERENCES}
    if OURS not in means or not refs:
        return None
    best = max(refs, key=refs.__getitem__)
    diff = means[OURS] - refs[best]
    paired = [by_model[OURS][k] - by_model[best][k] for k in by_model[OURS] if k in by_model[best]]
    se = statistics.stdev(paired) / len(paired) ** 0.5 if len(paired) > 1 else float("nan")
    word = "**yes**" if diff >= 0 else "**no**"
    return (f"{dataset}: ours {means[OURS]:.4f} vs best reference {best} {refs[best]:.4f} "
            f"({diff:+.4f}, paired standard error {se:.4f} over {len(paired)} seeds): at least as good: {word}")


def summary_table(scores: list[Score]) -> str:
    lines = [
        "| dataset | model | split seeds | test ROC-AUC | test PR-AUC | test KS | test Brier | test ECE "
        "| valid ROC-AUC | fit s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset in dict.fromkeys(s.dataset for s in scores):
        for model in dict.fromkeys(s.model for s in scores if s.dataset == dataset):
            rows = [s for s in scores if s.dataset == dataset and s.model == model]
            seeds = ", ".join(str(s.split_seed) for s in rows)
            name = f"**{model}**" if model == OURS else model
            lines.append(
                f"| {dataset} | {name} | {seeds} | {_mean_sd([s.test_auc for s in rows])} "
                f"| {_mean_sd([s.test_pr_auc for s in rows])} | {_mean_sd([s.test_ks for s in rows])} "
                f"| {_mean_sd([s.test_brier for s in rows])} | {_mean_sd([s.test_ece for s in rows])} "
                f"| {_mean_sd([s.valid_auc for s in rows])} | {statistics.fmean(s.fit_seconds for s in rows):.1f} |")
    verdicts = [v for d in dict.fromkeys(s.dataset for s in scores) if (v := verdict(scores, d))]
    return "\n".join(lines) + ("\n\n" + "\n".join(f"- {v}" for v in verdicts) if verdicts else "")


def seeds_table(scores: list[Score]) -> str:
    """Test ROC-AUC per split seed: how much of a difference the split alone makes."""
    seeds = list(dict.fromkeys(s.split_seed for s in scores))
    lines = ["| dataset | model | " + " | ".join(str(k) for k in seeds) + " |",
             "|---|---|" + "---:|" * len(seeds)]
    for dataset in dict.fromkeys(s.dataset for s in scores):
        for model in dict.fromkeys(s.model for s in scores if s.dataset == dataset):
            by_seed = {s.split_seed: s.test_auc for s in scores if s.dataset == dataset and s.model == model}
            lines.append(f"| {dataset} | {model} | "
                         + " | ".join(f"{by_seed[k]:.4f}" if k in by_seed else "" for k in seeds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(REAL_DATASETS), choices=list(REAL_DATASETS),
                        help="real datasets to score (risk_flag has no labelled file)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models to score (default: all)")
    parser.add_argument("--seed", type=int, default=None,
                        help="first split seed; also train.seed and the references' random_state "
                             "(default: params.yaml's split.seed; train.seed stays params.yaml's)")
    parser.add_argument("--seeds", type=int, default=10, metavar="N",
                        help="split seeds seed, seed+1, ..., seed+N-1 (default 10)")
    parser.add_argument("--judge", action="store_true",
                        help="judge choices without the test split: the validation split is scored as the test "
                             "split, and train is cut again into train and valid")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                        help="params file to take split/train settings from (default: the repo's params.yaml)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding <dataset>/<file> (default: $SHARED_DATA or ../shared/data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show LightGBM's per-iteration log")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    lightgbm.register_logger(logging.getLogger("lightgbm"))  # keep LightGBM's prints off stdout
    logging.getLogger("lightgbm").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("src").setLevel(logging.INFO if args.verbose else logging.WARNING)

    params = load_params(args.params)
    data_dir = (args.data_dir or shared_data_dir()).resolve()
    base_seed = args.seed if args.seed is not None else int(params["split"]["seed"])
    models = tuple(m for m in MODELS if m in args.models)

    started = time.perf_counter()
    scores: list[Score] = []
    for dataset in args.datasets:
        for k in range(args.seeds):
            settings = make_settings(params, dataset, base_seed + k, args.seed)
            scores += evaluate_dataset(settings, data_dir, models, args.judge)
    minutes = (time.perf_counter() - started) / 60

    seeds = f"{base_seed}-{base_seed + args.seeds - 1}" if args.seeds > 1 else str(base_seed)
    scored = "VALIDATION split (--judge: test rows unused)" if args.judge else "test split"
    print(f"## Model quality over split seeds {seeds} on the {scored} (params: {args.params.name}; "
          f"{minutes:.1f} min)\n")
    print("Mean ± sd over the split seeds; every model is scored on the same test rows of each split.\n")
    print(summary_table(scores))
    print("\n" + "\n".join(f"- `{m}`: {note}" for m, note in MODEL_NOTES.items() if m in models))
    print("\n### Test ROC-AUC per split seed\n")
    print(seeds_table(scores))


if __name__ == "__main__":
    main()
