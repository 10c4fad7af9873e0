"""Compiled trees (lleaves): LightGBM's probabilities, a disk cache that survives damage, and the fallbacks.

The boosters here are small ones trained on SYNTHETIC data (a few seconds to compile);
the served model's compiled trees are checked in the API and gunicorn tests.
"""

from __future__ import annotations

import builtins
import logging
import tempfile
from pathlib import Path

import lightgbm as lgb
import lleaves
import numpy as np
import pytest

from src.common import read_table
from src.modeling.pyfunc_model import example_rows
from src.scoring import compiled as compiled_mod
from src.scoring import model_store
from src.scoring.compiled import CompileError, compile_trees, probe_matrix
from tests.conftest import TrainedProject


def synthetic_booster(seed: int = 0, trees: int = 25) -> lgb.Booster:
    """A binary LightGBM model on SYNTHETIC rows: numeric features with missing values, one categorical."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 5))
    x[:, 4] = rng.integers(0, 4, size=600)
    x[rng.random(x.shape) < 0.05] = np.nan
    y = (np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) * (x[:, 4] == 2) + rng.normal(size=600) > 0)
    data = lgb.Dataset(x, label=y.astype(int), categorical_feature=[4], free_raw_data=False)
    return lgb.train({"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 5, "verbose": -1,
                      "seed": seed}, data, num_boost_round=trees)


def test_compiled_trees_give_lightgbms_probabilities_and_are_cached(tmp_path: Path) -> None:
    booster = synthetic_booster()
    first = compile_trees(booster, num_iteration=20, cache_dir=tmp_path)
    assert not first.from_cache and first.cache_file.exists()
    assert first.max_difference <= 1e-12

    rows = np.random.default_rng(7).normal(size=(300, 5))
    rows[:, 4] = np.random.default_rng(8).integers(0, 5, size=300)  # 4 = a category never seen in training
    rows[::7, 1] = np.nan
    expected = booster.predict(rows, num_iteration=20)
    np.testing.assert_allclose(first.predict(rows), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(first.predict(rows[:1]), expected[:1], rtol=0, atol=1e-12)
    # Only the first num_iteration trees: all 25 give other probabilities.
    assert np.max(np.abs(booster.predict(rows) - expected)) > 1e-6

    second = compile_trees(booster, num_iteration=20, cache_dir=tmp_path)
    assert second.from_cache and second.cache_file == first.cache_file
    np.testing.assert_array_equal(second.predict(rows), first.predict(rows))
    # Another model (or another number of trees) gets its own cache entry.
    other = compile_trees(booster, num_iteration=25, cache_dir=tmp_path)
    assert other.cache_file != first.cache_file and not other.from_cache
    assert not list(tmp_path.glob("*.tmp")), "staged files are renamed into place"


def test_a_damaged_cache_file_is_never_loaded_but_compiled_again(tmp_path: Path) -> None:
    """LLVM aborts the process on a bad object file: the digest check must keep such a file away from it."""
    booster = synthetic_booster(seed=1)
    good = compile_trees(booster, num_iteration=-1, cache_dir=tmp_path)
    original = good.cache_file.read_bytes()
    good.cache_file.write_bytes(original[: len(original) // 2])  # truncated, as by a full disk
    again = compile_trees(booster, num_iteration=-1, cache_dir=tmp_path)
    assert not again.from_cache and again.max_difference <= 1e-12
    assert compile_trees(booster, num_iteration=-1, cache_dir=tmp_path).from_cache  # repaired
    good.cache_file.with_name(good.cache_file.name + ".sha256").unlink()  # digest lost: not trusted either
    assert not compile_trees(booster, num_iteration=-1, cache_dir=tmp_path).from_cache


def test_compiled_trees_that_disagree_with_lightgbm_are_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_predict = lleaves.Model.predict
    monkeypatch.setattr(lleaves.Model, "predict", lambda self, data, n_jobs=None: real_predict(self, data, n_jobs)
                        + 1e-6)
    with pytest.raises(CompileError, match="differs from LightGBM by 1e-06"):
        compile_trees(synthetic_booster(seed=2), num_iteration=-1, cache_dir=tmp_path)


def test_without_lleaves_the_error_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_lleaves(name: str, *args: object, **kwargs: object) -> object:
        if name == "lleaves":
            raise ImportError("No module named 'lleaves'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lleaves)
    with pytest.raises(CompileError, match="lleaves cannot be imported"):
        compile_trees(synthetic_booster(seed=3), num_iteration=-1, cache_dir=tmp_path)


def test_probe_rows_cover_each_features_range_and_missing_values() -> None:
    text = "\n".join(["tree", "feature_infos=[-2:3.5] none 0:2:7 [10:10]", "tree_sizes=1"])
    probe = probe_matrix(text, 4, rows=2000)
    assert probe.shape == (2000, 4)
    numeric = probe[:, 0][~np.isnan(probe[:, 0])]
    assert numeric.min() < -2 and numeric.max() > 3.5  # a margin beyond the training range, both sides
    categories = set(probe[:, 2][~np.isnan(probe[:, 2])].tolist())
    assert categories == {0.0, 2.0, 7.0}
    share_missing = np.isnan(probe).mean()
    assert 0.05 < share_missing < 0.15
    with pytest.raises(CompileError, match="3 feature_infos for 4 features"):
        probe_matrix("feature_infos=[0:1] [0:1] [0:1]", 4)


def test_scorer_falls_back_to_lightgbm_when_compiling_fails(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture,
                                                            trained_project: TrainedProject) -> None:
    settings = trained_project.settings
    uri = str(trained_project.model_dir)
    served = model_store.load_model(uri, settings)
    assert served.scorer.engine == "lleaves" and served.describe()["probabilities_by"] == "lleaves"
    assert model_store.load_model(uri, settings, compile_trees=False).scorer.engine == "lightgbm"

    def broken(*args: object, **kwargs: object) -> None:
        raise CompileError("LLVM said no")

    monkeypatch.setattr(model_store, "compile_trees", broken)
    with caplog.at_level(logging.WARNING, logger="src.scoring.model_store"):
        fallback = model_store.load_model(uri, settings)
    assert fallback.scorer.engine == "lightgbm"
    assert "serving with LightGBM's own predict" in caplog.text and "LLVM said no" in caplog.text
    test_rows = example_rows(read_table(settings.split_table("test")), settings.profile, rows=200)
    matrix = served.scorer.encode(test_rows.to_dict(orient="records"))
    np.testing.assert_allclose(served.scorer.probabilities(matrix), fallback.scorer.probabilities(matrix),
                               rtol=0, atol=1e-12)


def test_default_cache_dir_is_under_the_system_temp_dir() -> None:
    assert compiled_mod.default_cache_dir().parent == Path(tempfile.gettempdir())
