"""Hyperparameter search for a profile's ``lgbm:`` section, judged on validation data only.

Every candidate is the pipeline's own ``train_model`` with ``profiles.<dataset>.lgbm`` set to one
point of the grid. It is judged as ``bench/model_quality.py --judge`` judges: on each split seed the
validation split is scored as if it were the test split and train is cut again into train and
valid, so the test rows are never read. The splits are prepared once per dataset and seed.

    python bench/tune.py --datasets lending_club \\
        --grid learning_rate=0.02,0.05,0.1 num_leaves=7,15,31 min_child_samples=20,40,80

Prints, per dataset, the candidates by mean validation ROC-AUC (± sd over the seeds) and the best
one as the YAML to put under ``profiles.<dataset>.lgbm``. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightgbm
import numpy as np
import yaml
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.model_quality import judging_splits, load_params, make_settings, prepare_splits  # noqa: E402
from src.config import settings_from_dict  # noqa: E402
from src.modeling.train import predict_proba, train_model  # noqa: E402
from tests.conftest import REAL_DATASETS, shared_data_dir  # noqa: E402

log = logging.getLogger("bench.tune")


def parse_grid(items: list[str]) -> list[dict[str, Any]]:
    """``name=v1,v2 ...`` -> every combination, as LightGBM parameter dicts (values read as YAML)."""
    axes = []
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name or not values:
            raise SystemExit(f"--grid item {item!r}: expected name=value[,value...]")
        axes.append([(name, yaml.safe_load(v)) for v in values.split(",")])
    return [dict(point) for point in itertools.product(*axes)]


def search(params: dict[str, Any], dataset: str, seeds: list[int], grid: list[dict[str, Any]],
           data_dir: Path) -> list[tuple[dict[str, Any], list[float]]]:
    """Validation ROC-AUC of every grid point on every seed, best mean first."""
    splits = {}
    for seed in seeds:
        settings = make_settings(params, dataset, seed, None)
        splits[seed] = judging_splits(prepare_splits(settings, data_dir), settings)
    base = params["profiles"][dataset].get("lgbm") or {}
    results = []
    for k, point in enumerate(grid, 1):
        started = time.perf_counter()
        candidate = {**params, "profiles": {**params["profiles"],
                                             dataset: {**params["profiles"][dataset], "lgbm": {**base, **point}}}}
        aucs = []
        for seed, parts in splits.items():
            settings = settings_from_dict({**candidate, "dataset": dataset, "split": {**params["split"], "seed": seed}},
                                          ROOT)
            result = train_model(parts["train"], parts["valid"], settings)
            y = parts["test"][settings.profile.target_column].to_numpy()
            aucs.append(float(roc_auc_score(y, predict_proba(result.pipeline, parts["test"],
                                                             settings.profile.feature_names))))
        results.append((point, aucs))
        log.info("%s %d/%d %s: validation ROC-AUC %.4f (%.1f s)", dataset, k, len(grid), point,
                 float(np.mean(aucs)), time.perf_counter() - started)
    return sorted(results, key=lambda r: -statistics.fmean(r[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(REAL_DATASETS), choices=list(REAL_DATASETS))
    parser.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2",
                        help="LightGBM parameters and the values to try (every combination)")
    parser.add_argument("--seeds", type=int, default=5, metavar="N", help="split seeds seed ... seed+N-1")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--top", type=int, default=10, help="candidates listed per dataset")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    lightgbm.register_logger(logging.getLogger("lightgbm"))
    logging.getLogger("lightgbm").setLevel(logging.WARNING)
    logging.getLogger("src").setLevel(logging.WARNING)
    params = load_params(args.params)
    grid = parse_grid(args.grid)
    base_seed = int(params["split"]["seed"])
    seeds = list(range(base_seed, base_seed + args.seeds))
    data_dir = (args.data_dir or shared_data_dir()).resolve()
    for dataset in args.datasets:
        ranked = search(params, dataset, seeds, grid, data_dir)
        print(f"## {dataset}: {len(grid)} candidates, validation ROC-AUC over split seeds {seeds[0]}-{seeds[-1]} "
              f"(test rows unused; params: {args.params.name})\n")
        print("| rank | profiles." + dataset + ".lgbm | mean | sd |\n|---:|---|---:|---:|")
        for rank, (point, aucs) in enumerate(ranked[:args.top], 1):
            sd = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
            print(f"| {rank} | `{point}` | {statistics.fmean(aucs):.4f} | {sd:.4f} |")
        best = {**(params["profiles"][dataset].get("lgbm") or {}), **ranked[0][0]}
        print(f"\nBest, for profiles.{dataset} in params.yaml:\n\n```yaml\nlgbm: "
              f"{yaml.safe_dump(best, default_flow_style=True).strip()}\n```\n")


if __name__ == "__main__":
    main()
