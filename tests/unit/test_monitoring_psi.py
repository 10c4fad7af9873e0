"""PSI math: identical distributions, hand-computed examples, unseen categories, empty bins, bands."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from src.config import ConfigError, settings_from_dict
from src.monitoring import psi
from tests.conftest import ROOT, load_params

EPS = 1e-4


def test_identical_distributions_have_zero_psi() -> None:
    values = pd.Series(np.random.default_rng(0).lognormal(10, 1, 5000))
    assert psi.numeric_psi(values, values.copy(), bins=10, epsilon=EPS).psi == 0.0
    codes = pd.Series([1, 2, 2, 3, 1, 2], dtype="Int64")
    assert psi.categorical_psi(codes, codes.copy(), known={1: "a", 2: "b", 3: "c", 4: "never seen"},
                               epsilon=EPS).psi == 0.0


def test_hand_computed_example() -> None:
    # shares 0.5/0.3/0.2 -> 0.3/0.3/0.4: (0.3-0.5)ln(0.3/0.5) + 0 + (0.4-0.2)ln(0.4/0.2)
    expected = -0.2 * math.log(0.6) + 0.2 * math.log(2.0)
    assert psi.psi_from_counts([50, 30, 20], [30, 30, 40], EPS) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.240795, abs=1e-6)
    # the same through the categorical path
    ref = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    cur = pd.Series(["a"] * 3 + ["b"] * 3 + ["c"] * 4)
    assert psi.categorical_psi(ref, cur, None, EPS).psi == pytest.approx(expected, abs=1e-12)


def test_numeric_bins_are_reference_quantiles_and_empty_bins_use_epsilon() -> None:
    reference = pd.Series(np.arange(100, dtype=float))  # 4 bins of 25: (-inf, 24], ..., (74, inf)
    batch = pd.Series(np.r_[np.arange(0, 25), np.arange(75, 100)].astype(float))  # middle bins empty
    result = psi.numeric_psi(reference, batch, bins=4, epsilon=EPS)
    assert result.labels[:4] == ("(-inf, 24]", "(24, 49]", "(49, 74]", "(74, inf]")
    assert result.reference_share == (0.25, 0.25, 0.25, 0.25, 0.0)
    assert result.batch_share == (0.5, 0.0, 0.0, 0.5, 0.0)
    expected = 2 * (0.5 - 0.25) * math.log(2) + 2 * (EPS - 0.25) * math.log(EPS / 0.25)
    assert result.psi == pytest.approx(expected, rel=1e-12)


def test_ties_in_discrete_columns_merge_bins_and_boundaries_are_right_closed() -> None:
    reference = pd.Series([-1.0] * 30 + [0.0] * 50 + [2.0] * 20)  # repayment-status-like codes
    result = psi.numeric_psi(reference, reference, bins=10, epsilon=EPS)
    assert result.labels == ("(-inf, -1]", "(-1, 0]", "(0, 2]", "(2, inf]", psi.MISSING)
    assert result.reference_share == (0.3, 0.5, 0.2, 0.0, 0.0)


def test_missing_values_have_their_own_bin() -> None:
    reference = pd.Series(np.linspace(0, 1, 1000))
    batch = pd.Series(np.r_[np.linspace(0, 1, 900), [np.nan] * 100])
    result = psi.numeric_psi(reference, batch, bins=10, epsilon=EPS)
    assert result.labels[-1] == psi.MISSING
    assert result.batch_share[-1] == pytest.approx(0.1)
    assert result.psi > 0.1


def test_unseen_categories_go_to_the_other_bucket() -> None:
    reference = pd.Series([1, 1, 2, 2], dtype="Int64")
    batch = pd.Series([1.0, 2.0, 7.0, 7.0])  # 7 never seen and not declared
    result = psi.categorical_psi(reference, batch, known={1: "x", 2: "y"}, epsilon=EPS)
    assert result.labels == ("1", "2", psi.OTHER, psi.MISSING)
    assert result.batch_share == (0.25, 0.25, 0.5, 0.0)
    expected = 2 * (0.25 - 0.5) * math.log(0.5) + (0.5 - EPS) * math.log(0.5 / EPS)
    assert result.psi == pytest.approx(expected, rel=1e-12)


def test_category_keys_agree_across_spellings() -> None:
    assert psi.category_key(np.int64(3)) == psi.category_key(3.0) == psi.category_key(3) == 3
    assert psi.category_key(" RENT ") == "RENT"
    assert psi.category_key(float("nan")) is None and psi.category_key(pd.NA) is None


def test_bands_follow_the_thresholds() -> None:
    assert psi.band(0.0999, 0.1, 0.25) == psi.NONE
    assert psi.band(0.1, 0.1, 0.25) == psi.MODERATE
    assert psi.band(0.2499, 0.1, 0.25) == psi.MODERATE
    assert psi.band(0.25, 0.1, 0.25) == psi.SIGNIFICANT


def test_empty_sides_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        psi.psi_from_counts([1, 2], [0, 0], EPS)


@pytest.mark.parametrize(("override", "message"), [
    ({"psi_moderate": 0.3}, "psi_moderate"),
    ({"drift_flag_band": "high"}, "drift_flag_band"),
    ({"psi_bins": 1}, "psi_bins"),
    ({"psi_epsilon": 0}, "psi_epsilon"),
    ({"exporter_bind": "9108"}, "exporter_bind"),
    ({"psi_bin": 10}, "unknown key"),
])
def test_monitoring_settings_are_validated(override: dict, message: str) -> None:
    params = load_params()
    params["monitoring"] = {**params.get("monitoring", {}), **override}
    with pytest.raises(ConfigError, match=message):
        settings_from_dict(params, ROOT)


def test_monitoring_settings_come_from_params() -> None:
    params = load_params()
    settings = settings_from_dict(params, ROOT)
    assert settings.monitoring.psi_moderate == params["monitoring"]["psi_moderate"]
    assert settings.monitoring.psi_significant == params["monitoring"]["psi_significant"]
