"""The drift tests PSI misses (src/monitoring/stats.py), on SYNTHETIC samples with known shifts.

Each test draws its own synthetic reference and batch, so the verdicts are about the
method: fires on a real shift, stays quiet on noise, judges by the sample size, and does
not flag a shift too small to matter however many rows there are. The real-data drill is
tests/integration/test_drift_drill.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from src.config import ConfigError, load_settings
from src.monitoring import stats
from tests.conftest import load_params

ALPHA = 0.01 / 21  # what a run over 20 features and the score gives each test


def amounts(rows: int, seed: int, scale: float = 1.0) -> pd.Series:
    """SYNTHETIC heavy-tailed amounts (lognormal, a third of them zero), like bill or payment amounts."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(9, 1.2, rows) * scale
    values[rng.random(rows) < 0.33] = 0
    return pd.Series(values.round())


def test_ks_fires_on_a_scaled_amount_and_stays_quiet_on_a_fresh_sample() -> None:
    reference = amounts(20_000, seed=1)
    quiet = stats.ks_test(reference, amounts(5_000, seed=2), ALPHA, 0.05)
    assert quiet.fired is False and quiet.statistic < 0.05 and quiet.p_value > ALPHA
    scaled = stats.ks_test(reference, amounts(5_000, seed=2, scale=1.6), ALPHA, 0.05)
    assert scaled.fired is True and scaled.statistic > 0.1 and scaled.p_value < 1e-20


def test_ks_judges_by_the_sample_size() -> None:
    """40 rows scaled by 1.3: a gap that size is what 40 rows give by chance, so it does not fire."""
    small = stats.ks_test(amounts(20_000, seed=1), amounts(40, seed=3, scale=1.3), ALPHA, 0.05)
    assert small.fired is False and small.statistic >= 0.05 and small.p_value > ALPHA


def test_ks_effect_floor_keeps_a_huge_batch_from_flagging_a_trivial_shift() -> None:
    """A million rows make a 1 % scale change 'significant'; the D floor keeps it from being drifted."""
    result = stats.ks_test(amounts(1_000_000, seed=1), amounts(1_000_000, seed=2, scale=1.01), ALPHA, 0.05)
    assert result.p_value < ALPHA and result.statistic < 0.05 and result.fired is False


def test_ks_on_a_side_without_values_is_not_testable() -> None:
    result = stats.ks_test(amounts(100, seed=1), pd.Series([np.nan, np.nan]), ALPHA, 0.05)
    assert result.statistic is None and result.fired is False
    assert result.as_dict() == {"name": "ks", "statistic": None, "p_value": None, "fired": False}


def test_chi_square_fires_on_swapped_codes_and_not_on_the_same_shares() -> None:
    reference = [7_400, 9_800, 3_450, 90, 0]  # the last category: seen on neither side
    swapped = [1_600, 2_150, 720, 15, 0]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    fired = stats.chi_square_test(reference, swapped, ALPHA, 0.05)
    assert fired.fired is True and fired.effect > 0.1 and fired.p_value < 1e-30
    same = stats.chi_square_test(reference, [1_600, 2_150, 720, 15, 0], ALPHA, 0.05)
    assert same.fired is False and same.effect < 0.02
    assert fired.as_dict()["js_distance"] == round(fired.effect, 6)


def test_chi_square_with_a_single_category_cannot_fire() -> None:
    assert stats.chi_square_test([500, 0], [20, 0], ALPHA, 0.05).fired is False


def test_default_rates_move_when_codes_swap_and_small_categories_are_skipped() -> None:
    rng = np.random.default_rng(5)
    rate = {1: 0.19, 2: 0.24, 3: 0.25, 9: 0.5}
    ref_keys = pd.Series(rng.choice([1, 2, 3, 9], 20_000, p=[0.36, 0.48, 0.158, 0.002]))
    ref_y = pd.Series((rng.random(20_000) < ref_keys.map(rate)).astype(float))
    cur_true = pd.Series(rng.choice([1, 2, 3], 4_500, p=[0.36, 0.48, 0.16]))
    cur_y = pd.Series((rng.random(4_500) < cur_true.map(rate)).astype(float))
    swapped = cur_true.replace({1: 2, 2: 1})

    categories = stats.default_rates(ref_keys, ref_y, swapped, cur_y, min_rows=30)
    assert [c["category"] for c in categories] == ["1", "2", "3"]  # 9: no batch rows at all
    assert stats.judge_default_rates(categories, 0.01 / 3, 0.03) is True
    assert {c["category"] for c in categories if c["fired"]} == {"1", "2"}

    honest = stats.default_rates(ref_keys, ref_y, cur_true, cur_y, min_rows=30)
    assert stats.judge_default_rates(honest, 0.01 / 3, 0.03) is False

    cur_y_unknown = cur_y.where(pd.Series(rng.random(4_500) < 0.99))  # outcomes not matured: left out
    few = stats.default_rates(ref_keys, ref_y, swapped, cur_y_unknown, min_rows=2_000)
    # the only code with 2,000 rows on both sides (after the swap the batch's code 1 holds the big group)
    assert [c["category"] for c in few] == ["1"]
    assert few[0]["batch_rows"] == int(cur_y_unknown[swapped == 1].notna().sum())


def test_outcome_labels_read_numeric_and_text_targets() -> None:
    valid, label = stats.outcome_labels(pd.Series([0, 1, "1", None, 7]), 1)
    assert valid.tolist() == [True, True, True, False, False] and label.tolist() == [False, True, True, False, False]
    valid, label = stats.outcome_labels(pd.Series(["Y", "N", " Y ", "", None]), "Y")
    assert valid.fillna(False).tolist() == [True, True, True, False, False]
    assert label.fillna(False).tolist() == [True, False, True, False, False]


@pytest.mark.parametrize(("key", "value"), [("drift_alpha", 0), ("drift_alpha", 1.5), ("ks_min_statistic", -0.1),
                                            ("js_min_distance", "high"), ("default_rate_min_rows", 0),
                                            ("default_rate_min_difference", 1)])
def test_a_bad_drift_test_setting_is_an_error_naming_its_key(key: str, value: object, tmp_path) -> None:
    import yaml  # noqa: PLC0415

    params = load_params()
    params["monitoring"][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"monitoring.{key}"):
        load_settings(path)
