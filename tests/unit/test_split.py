"""Split: proportions, stratification, duplicate groups kept together, seeding, no row lost or doubled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.common import PipelineError, write_table
from src.config import SplitSettings
from src.data import split as split_mod
from src.data.ingest import ingest, read_raw
from src.data.split import SPLITS, split_frame
from src.data.validate import validate
from tests.conftest import load_params, make_settings, real_file

PARAMS = load_params()
FEATURES = ["amount", "grade", "region", "tenure"]
TARGET = "default"


def planted_frame(seed: int = 0, base_rows: int = 6000, dup_sources: int = 500) -> pd.DataFrame:
    """Unique rows plus many exact feature duplicates, some with a different label, some with NaNs."""
    rng = np.random.default_rng(seed)
    base = pd.DataFrame({
        "amount": np.round(rng.lognormal(8, 1, base_rows), 2),
        "grade": pd.array(rng.integers(1, 6, base_rows), dtype="Int64"),
        "region": pd.array(rng.choice(list("NESW"), base_rows), dtype="string"),
        "tenure": np.where(rng.random(base_rows) < 0.1, np.nan, rng.integers(0, 30, base_rows).astype(float)),
        TARGET: (rng.random(base_rows) < 0.22).astype("int8"),
    })
    base.loc[rng.random(base_rows) < 0.03, "grade"] = pd.NA
    sources = rng.choice(base_rows, dup_sources, replace=False)
    repeats = rng.integers(1, 7, dup_sources)
    copies = base.iloc[np.repeat(sources, repeats)].reset_index(drop=True)
    flip = np.repeat(np.arange(dup_sources) % 3 == 0, repeats)  # duplicates whose label disagrees
    copies.loc[flip, TARGET] = 1 - copies.loc[flip, TARGET]
    frame = pd.concat([base, copies], ignore_index=True)
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    frame.insert(0, "row_id", np.arange(len(frame)))  # not a feature: rows differing only here are duplicates
    return frame


def settings_split(seed: int = 42, valid: float | None = None, test: float | None = None) -> SplitSettings:
    """params.yaml's split sizes unless given."""
    return SplitSettings(valid_size=PARAMS["split"]["valid_size"] if valid is None else valid,
                         test_size=PARAMS["split"]["test_size"] if test is None else test, seed=seed)


def independent_keys(frame: pd.DataFrame, features: list[str]) -> pd.Series:
    """Duplicate-group key built without hashing: the row's feature values as text."""
    parts = [frame[c].astype(object).where(frame[c].notna(), "<missing>").astype(str) for c in features]
    key = parts[0]
    for part in parts[1:]:
        key = key + "\x1f" + part
    return key


@pytest.fixture(scope="module")
def planted() -> pd.DataFrame:
    return planted_frame()


@pytest.fixture(scope="module")
def planted_parts(planted) -> dict[str, pd.DataFrame]:
    return split_frame(planted, FEATURES, TARGET, settings_split())


def test_planted_frame_really_has_conflicting_duplicates(planted):
    keys = independent_keys(planted, FEATURES)
    sizes = keys.value_counts()
    assert (sizes > 1).sum() >= 400
    labels_per_key = planted.groupby(keys)[TARGET].nunique()
    assert (labels_per_key > 1).sum() >= 100
    assert planted.loc[keys.duplicated(keep=False), "tenure"].isna().any()
    assert planted.loc[keys.duplicated(keep=False), "grade"].isna().any()


def test_proportions(planted, planted_parts):
    n = len(planted)
    valid, test = PARAMS["split"]["valid_size"], PARAMS["split"]["test_size"]
    assert set(planted_parts) == set(SPLITS)
    assert len(planted_parts["valid"]) / n == pytest.approx(valid, abs=0.015)
    assert len(planted_parts["test"]) / n == pytest.approx(test, abs=0.015)
    assert len(planted_parts["train"]) / n == pytest.approx(1 - valid - test, abs=0.02)


@pytest.mark.parametrize(("valid", "test"), [(0.1, 0.2), (0.25, 0.05), (0.3, 0.3)])
def test_proportions_follow_params(valid, test, planted):
    parts = split_frame(planted, FEATURES, TARGET, settings_split(valid=valid, test=test))
    n = len(planted)
    assert len(parts["valid"]) / n == pytest.approx(valid, abs=0.015)
    assert len(parts["test"]) / n == pytest.approx(test, abs=0.015)


def test_stratified(planted, planted_parts):
    overall = planted[TARGET].mean()
    for name, part in planted_parts.items():
        assert part[TARGET].mean() == pytest.approx(overall, abs=0.01), name


def test_duplicates_never_straddle_splits(planted_parts):
    owner: dict[str, str] = {}
    for name, part in planted_parts.items():
        for key in independent_keys(part, FEATURES).unique():
            assert owner.setdefault(key, name) == name, f"feature row in both {owner[key]} and {name}"


def test_union_is_input_no_row_lost_or_doubled(planted, planted_parts):
    ids = np.concatenate([part["row_id"].to_numpy() for part in planted_parts.values()])
    assert len(ids) == len(planted)
    assert len(np.unique(ids)) == len(ids)
    assert set(ids) == set(planted["row_id"])
    # rows are carried whole and unchanged
    together = pd.concat(planted_parts.values()).sort_values("row_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(together, planted.sort_values("row_id").reset_index(drop=True))


def test_same_seed_same_split_other_seed_other_split(planted, planted_parts):
    again = split_frame(planted, FEATURES, TARGET, settings_split(seed=42))
    for name in SPLITS:
        pd.testing.assert_frame_equal(again[name], planted_parts[name])
    other = split_frame(planted, FEATURES, TARGET, settings_split(seed=7))
    for name in SPLITS:
        assert set(other[name]["row_id"]) != set(planted_parts[name]["row_id"])


def test_split_does_not_depend_on_row_order(planted, planted_parts):
    shuffled = planted.sample(frac=1.0, random_state=99).reset_index(drop=True)
    parts = split_frame(shuffled, FEATURES, TARGET, settings_split())
    for name in SPLITS:
        assert set(parts[name]["row_id"]) == set(planted_parts[name]["row_id"])


def test_too_few_rows_to_stratify():
    frame = planted_frame(base_rows=12, dup_sources=0).head(6)
    frame[TARGET] = [0, 0, 0, 0, 0, 1]
    with pytest.raises(PipelineError, match="cannot split 6 rows"):
        split_frame(frame, FEATURES, TARGET, settings_split())


# --- real data -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def credit_clean(tmp_path_factory) -> pd.DataFrame:
    profile = make_settings("credit_risk", tmp_path_factory.mktemp("cr")).profile
    return validate(ingest(read_raw(real_file("credit_risk"), "csv", {}), profile), profile).clean


def test_real_credit_risk_repeats_stay_together(credit_clean, tmp_path):
    profile = make_settings("credit_risk", tmp_path).profile
    features = profile.feature_names
    keys = independent_keys(credit_clean, features)
    assert keys.duplicated().sum() > 100  # the file has exact repeats
    parts = split_frame(credit_clean, features, profile.target_column, settings_split())
    owners = pd.concat([pd.Series(name, index=independent_keys(part, features).unique())
                        for name, part in parts.items()])
    assert owners.index.is_unique
    assert sum(len(p) for p in parts.values()) == len(credit_clean)
    overall = credit_clean[profile.target_column].mean()
    for part in parts.values():
        assert part[profile.target_column].mean() == pytest.approx(overall, abs=0.01)


def test_run_writes_three_tables(credit_clean, tmp_path):
    settings = make_settings("credit_risk", tmp_path, split={"seed": 3})
    write_table(credit_clean, settings.clean_table)
    parts = split_mod.run(settings)
    total = 0
    for name in SPLITS:
        written = pd.read_parquet(settings.split_table(name))
        pd.testing.assert_frame_equal(written, parts[name], check_dtype=False)
        total += len(written)
    assert total == len(credit_clean)
    assert Path(settings.split_table("train")).name == "train.parquet"


def test_run_without_clean_table(tmp_path):
    with pytest.raises(PipelineError, match=r"clean\.parquet is missing"):
        split_mod.run(make_settings("credit_risk", tmp_path))

