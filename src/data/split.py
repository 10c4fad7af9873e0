"""Stage 3, split: clean table -> train / valid / test parquet.

Stratified on the target and seeded. Rows with exactly the same feature values
form one group and go to one split together: otherwise the model is scored on
rows it has memorised (credit_risk alone has 165 such repeats) and the test
score flatters it.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from src.common import PipelineError, read_table, run_main, write_table
from src.config import Settings, SplitSettings, load_settings

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


def duplicate_groups(features: pd.DataFrame) -> np.ndarray:
    """One 64-bit key per row; rows with identical feature values share a key."""
    return pd.util.hash_pandas_object(features, index=False).to_numpy()


def _groups(df: pd.DataFrame, feature_cols: list[str], target: str) -> tuple[np.ndarray, pd.Series]:
    """Each row's group key, and per group whether it defaulted (stratification's label).

    A group counts as a default if any of its rows defaulted; groups are almost all single rows,
    so the stratification is as good as row-level.
    """
    keys = duplicate_groups(df[feature_cols])
    return keys, pd.Series(df[target].to_numpy(), index=keys).groupby(level=0).max()


def split_frame(df: pd.DataFrame, feature_cols: list[str], target: str,
                settings: SplitSettings) -> dict[str, pd.DataFrame]:
    """Stratified, seeded, group-aware three-way split."""
    keys, groups = _groups(df, feature_cols, target)
    holdout = settings.valid_size + settings.test_size
    try:
        train_g, rest_g = train_test_split(groups.index.to_numpy(), test_size=holdout,
                                           stratify=groups.to_numpy(), random_state=settings.seed)
        valid_g, test_g = train_test_split(rest_g, test_size=settings.test_size / holdout,
                                           stratify=groups.loc[rest_g].to_numpy(), random_state=settings.seed)
    except ValueError as exc:  # too few rows of a class to stratify
        raise PipelineError(f"cannot split {len(df)} rows ({groups.value_counts().to_dict()} groups per class): "
                            f"{exc}") from exc
    out = {}
    for name, chosen in zip(SPLITS, (train_g, valid_g, test_g), strict=True):
        mask = np.isin(keys, chosen)
        out[name] = df.loc[mask].reset_index(drop=True)
    return out


def group_folds(df: pd.DataFrame, feature_cols: list[str], target: str, folds: int,
                seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded, group-aware k-fold: (fit rows, held-out rows) positions per fold.

    Exact feature repeats stay in one fold, as :func:`split_frame` keeps them in one split,
    so no fold is judged on rows its model has memorised.
    """
    keys, groups = _groups(df, feature_cols, target)
    counts = groups.value_counts()
    if len(counts) < 2 or counts.min() < folds:  # a fold without defaults cannot be judged
        raise PipelineError(f"cannot cut {len(df)} rows ({counts.to_dict()} groups per class) into {folds} "
                            f"folds: each class needs at least {folds} groups")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    chosen = [groups.index.to_numpy()[held] for _, held in splitter.split(groups.index, groups.to_numpy())]
    out = []
    for held_keys in chosen:
        held = np.isin(keys, held_keys)
        out.append((np.flatnonzero(~held), np.flatnonzero(held)))
    return out


def run(settings: Settings) -> dict[str, pd.DataFrame]:
    profile = settings.profile
    clean = read_table(settings.clean_table)
    parts = split_frame(clean, profile.feature_names, profile.target_column, settings.split)
    repeats = len(clean) - len(np.unique(duplicate_groups(clean[profile.feature_names])))
    log.info("%d rows, %d exact feature repeats kept within one split", len(clean), repeats)
    for name, part in parts.items():
        write_table(part, settings.split_table(name))
        log.info("  %-5s %6d rows, default rate %.4f", name, len(part), part[profile.target_column].mean())
    return parts


def main() -> None:
    run(load_settings())


if __name__ == "__main__":
    run_main(main)
