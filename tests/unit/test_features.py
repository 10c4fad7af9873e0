"""The preprocessor: cross-fitted target encoding (no label leakage), unknown categories, column names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import TargetEncoder

from src.config import Profile
from src.modeling.features import build_classifier, build_preprocessor, cast_frame
from src.modeling.train import train_model
from tests.conftest import load_params, make_settings

PARAMS = load_params()


def frame_from_profile(profile: Profile, n: int, seed: int) -> pd.DataFrame:
    """Random rows that satisfy the profile, typed as validation leaves them (Int64 / string / float)."""
    rng = np.random.default_rng(seed)
    data: dict[str, pd.Series] = {}
    for name, spec in profile.features.items():
        if spec.is_categorical and spec.values is not None:
            codes = list(spec.values)
            picked = [codes[i] for i in rng.integers(0, len(codes), n)]
            data[name] = pd.Series(picked, dtype="Int64" if spec.value_kind is int else "string")
        elif spec.is_categorical:
            data[name] = pd.Series([f"{name}-{i}" for i in rng.integers(0, 40, n)], dtype="string")
        else:
            data[name] = pd.Series(rng.uniform(spec.min, spec.max, n))
    data[profile.target_column] = pd.Series((rng.random(n) < 0.3).astype("int8"))
    return pd.DataFrame(data)


def preprocessor_for(profile: Profile, seed: int = 0):
    return build_preprocessor(profile, PARAMS["train"]["target_encoder"], seed)


# --- one output column per raw feature --------------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(PARAMS["profiles"]))
def test_one_model_column_per_raw_feature(dataset, tmp_path):
    profile = make_settings(dataset, tmp_path).profile
    frame = frame_from_profile(profile, 400, seed=1)
    x = preprocessor_for(profile).fit_transform(frame[profile.feature_names], frame[profile.target_column])
    assert isinstance(x, pd.DataFrame)
    assert len(x.columns) == len(profile.feature_names)
    assert set(x.columns) == set(profile.feature_names)
    assert len(x) == 400
    assert all(x[c].dtype.kind == "f" for c in x.columns)
    assert np.isfinite(x.to_numpy()).all()  # every code is known and every number present here


def test_ordinal_codes_follow_declared_order(tmp_path):
    profile = make_settings("credit_risk", tmp_path).profile
    frame = frame_from_profile(profile, 200, seed=2)
    x = preprocessor_for(profile).fit_transform(frame[profile.feature_names], frame[profile.target_column])
    declared = list(profile.features["cb_person_default_on_file"].values)  # ["Y", "N"]
    expected = frame["cb_person_default_on_file"].map({code: i for i, code in enumerate(declared)})
    np.testing.assert_array_equal(x["cb_person_default_on_file"].to_numpy(), expected.to_numpy(dtype=float))
    # numeric columns pass through unchanged
    np.testing.assert_array_equal(x["loan_amnt"].to_numpy(), frame["loan_amnt"].to_numpy())


def test_unknown_and_missing_categories_do_not_crash(tmp_path):
    profile = make_settings("lending_club", tmp_path).profile
    frame = frame_from_profile(profile, 500, seed=3)
    pre = preprocessor_for(profile)
    pre.fit_transform(frame[profile.feature_names], frame[profile.target_column])
    novel = frame[profile.feature_names].head(4).copy()
    novel["purpose"] = pd.array(["yacht", "moon", pd.NA, "credit_card"], dtype="string")  # target-encoded: unseen
    novel["credit_policy"] = pd.array([7, pd.NA, 0, 1], dtype="Int64")  # ordinal: unseen code, missing
    novel["fico"] = [np.nan, 700.0, 710.0, 720.0]
    x = pre.transform(novel)
    encoder: TargetEncoder = pre.named_steps["encode"].named_transformers_["target"]
    # unseen target-encoded categories get the training default rate
    assert x["purpose"].iloc[0] == pytest.approx(encoder.target_mean_)
    assert x["purpose"].iloc[1] == pytest.approx(encoder.target_mean_)
    assert np.isfinite(x["purpose"]).all()
    # an unknown ordinal code and a missing one become NaN, which LightGBM handles natively
    assert np.isnan(x["credit_policy"].iloc[0]) and np.isnan(x["credit_policy"].iloc[1])
    assert x["credit_policy"].iloc[2] == 0.0 and x["credit_policy"].iloc[3] == 1.0
    assert np.isnan(x["fico"].iloc[0])


def test_unknown_string_category_at_transform(tmp_path):
    profile = make_settings("risk_flag", tmp_path).profile
    frame = frame_from_profile(profile, 500, seed=4)
    pre = preprocessor_for(profile)
    pre.fit_transform(frame[profile.feature_names], frame[profile.target_column])
    novel = frame[profile.feature_names].head(2).copy()
    novel["city"] = pd.array(["Atlantis", "El Dorado"], dtype="string")
    novel["house_ownership"] = pd.array(["castle", "rented"], dtype="string")
    x = pre.transform(novel)
    assert np.isfinite(x["city"]).all()
    assert np.isnan(x["house_ownership"].iloc[0])
    assert x["house_ownership"].iloc[1] == list(profile.features["house_ownership"].values).index("rented")


def test_plain_python_rows_encode_like_typed_rows(tmp_path):
    """Rows from an API (plain ints/strings/None) look like validated rows (Int64/string/NA) after cast."""
    profile = make_settings("taiwan_credit", tmp_path).profile
    frame = frame_from_profile(profile, 300, seed=5)
    frame.loc[3, "education"] = pd.NA
    frame.loc[4, "limit_bal"] = np.nan
    pre = preprocessor_for(profile)
    pre.fit_transform(frame[profile.feature_names], frame[profile.target_column])
    typed = frame[profile.feature_names].head(10)
    plain = pd.DataFrame([{k: (None if pd.isna(v) else (int(v) if isinstance(v, np.integer) else v))
                           for k, v in rec.items()} for rec in typed.to_dict("records")])
    pd.testing.assert_frame_equal(pre.transform(plain), pre.transform(typed))


def test_cast_frame_types():
    df = pd.DataFrame({
        "code": pd.array([1, pd.NA, 3], dtype="Int64"),
        "label": pd.array(["a", pd.NA, "c"], dtype="string"),
        "num": ["1.5", "x", None],
    })
    out = cast_frame(df, numeric=["num"], categorical=["code", "label"])
    assert list(out.columns) == ["code", "label", "num"]
    assert out["code"].dtype == object and out["label"].dtype == object
    assert out["code"].iloc[0] == 1 and out["label"].iloc[2] == "c"
    assert isinstance(out["code"].iloc[1], float) and np.isnan(out["code"].iloc[1])
    assert isinstance(out["label"].iloc[1], float) and np.isnan(out["label"].iloc[1])
    assert out["num"].dtype == np.float64
    assert out["num"].iloc[0] == 1.5 and np.isnan(out["num"].iloc[1]) and np.isnan(out["num"].iloc[2])


# --- leakage: cross-fitting ---------------------------------------------------------------------------

NOISE_PROFILE = {
    "title": "pure noise",
    "source": {"file": "noise.csv"},
    "rename": {"noise": "noise", "x": "x", "grade": "grade", "y": "y"},
    "target": {"column": "y", "positive": 1},
    "target_encode": ["noise"],
    "features": {
        "noise": {"type": "categorical", "values": None, "reason_code": "N1", "reason": "Noise"},
        "x": {"type": "numeric", "min": -100, "max": 100, "reason_code": "N2", "reason": "X"},
        "grade": {"type": "categorical", "values": {"A": "a", "B": "b", "C": "c"}, "reason_code": "N3",
                  "reason": "Grade"},
    },
    "protected": {},
    "native_categorical": [],
    "lgbm": {},
    "refit_trees": 1.0,
}


def noise_settings(tmp_path: Path, **train):
    lgbm = {**PARAMS["train"]["lgbm"], "n_estimators": 150, "n_jobs": 1}
    return make_settings("noise", tmp_path, profiles={"noise": NOISE_PROFILE},
                         train={"lgbm": lgbm, "early_stopping_rounds": 30, "log_every": 0, **train})


def noise_frame(n: int, seed: int, levels: int) -> pd.DataFrame:
    """Labels independent of every feature; 'noise' is a near-unique category per row."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "noise": pd.array([f"c{k}" for k in rng.integers(0, levels, n)], dtype="string"),
        "x": rng.normal(0, 10, n),
        "grade": pd.array(rng.choice(["A", "B", "C"], n), dtype="string"),
        "y": (rng.random(n) < 0.3).astype("int8"),
    })


@pytest.fixture(scope="module")
def noise_train() -> pd.DataFrame:
    return noise_frame(4000, seed=10, levels=2000)


def test_fit_transform_is_cross_fitted(noise_train, tmp_path):
    settings = noise_settings(tmp_path)
    profile = settings.profile
    x, y = noise_train[profile.feature_names], noise_train["y"]
    crossed = preprocessor_for(profile, seed=1).fit_transform(x, y)
    naive = preprocessor_for(profile, seed=1).fit(x, y).transform(x)
    # the target-encoded column differs row by row ...
    assert not np.allclose(crossed["noise"], naive["noise"])
    assert np.mean(np.abs(crossed["noise"] - naive["noise"])) > 0.01
    # ... while ordinal and numeric columns are identical
    pd.testing.assert_series_equal(crossed["x"], naive["x"])
    pd.testing.assert_series_equal(crossed["grade"], naive["grade"])


def test_cross_fitted_noise_carries_no_signal_but_naive_does(noise_train, tmp_path):
    profile = noise_settings(tmp_path).profile
    x, y = noise_train[profile.feature_names], noise_train["y"]
    crossed = preprocessor_for(profile).fit_transform(x, y)["noise"]
    naive = preprocessor_for(profile).fit(x, y).transform(x)["noise"]
    naive_auc = roc_auc_score(y, naive)
    crossed_auc = roc_auc_score(y, crossed)
    assert naive_auc > 0.7, naive_auc            # a row's own label leaks into its encoding
    assert abs(crossed_auc - 0.5) < 0.05, crossed_auc


def test_after_fit_transform_the_served_encoding_uses_all_rows(noise_train, tmp_path):
    profile = noise_settings(tmp_path).profile
    x, y = noise_train[profile.feature_names], noise_train["y"]
    fitted_by_fit_transform = preprocessor_for(profile)
    fitted_by_fit_transform.fit_transform(x, y)
    fitted_by_fit = preprocessor_for(profile).fit(x, y)
    fresh = noise_frame(500, seed=11, levels=2000)[profile.feature_names]
    pd.testing.assert_frame_equal(fitted_by_fit_transform.transform(fresh), fitted_by_fit.transform(fresh))


def test_model_on_pure_noise_scores_chance_on_fresh_rows(noise_train, tmp_path):
    settings = noise_settings(tmp_path)
    valid = noise_frame(2000, seed=12, levels=2000)
    test = noise_frame(4000, seed=13, levels=2000)
    result = train_model(noise_train, valid, settings)
    proba = result.pipeline.predict_proba(test[settings.profile.feature_names])[:, 1]
    assert abs(roc_auc_score(test["y"], proba) - 0.5) < 0.05


def test_naive_encoding_lets_a_model_memorise_noise(noise_train, tmp_path):
    """Control for the test above: the same model on naively encoded rows fits the noise."""
    settings = noise_settings(tmp_path)
    profile = settings.profile
    x, y = noise_train[profile.feature_names], noise_train["y"]
    pre = preprocessor_for(profile).fit(x, y)
    model = build_classifier({**settings.train.lgbm, "n_estimators": 50}, seed=0)
    model.fit(pre.transform(x), y)
    train_auc = roc_auc_score(y, model.predict_proba(pre.transform(x))[:, 1])
    crossed = preprocessor_for(profile).fit_transform(x, y)
    honest = build_classifier({**settings.train.lgbm, "n_estimators": 50}, seed=0).fit(crossed, y)
    honest_auc = roc_auc_score(y, honest.predict_proba(crossed)[:, 1])
    assert train_auc > 0.75
    assert train_auc - honest_auc > 0.1


def test_encoder_settings_reach_the_target_encoder(tmp_path):
    profile = make_settings("lending_club", tmp_path).profile
    pre = build_preprocessor(profile, {"cv": 3, "smooth": 7.0}, seed=9)
    encoder = {name: t for name, t, _ in pre.named_steps["encode"].transformers}["target"]
    assert isinstance(encoder, TargetEncoder)
    assert encoder.smooth == 7.0
    assert encoder.cv.n_splits == 3
    assert encoder.cv.random_state == 9
    assert encoder.target_type == "binary"
