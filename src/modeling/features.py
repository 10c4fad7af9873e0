"""The model as one sklearn Pipeline: cast -> encode -> LightGBM.

Preprocessing and model travel as one artifact, so training and serving cannot
disagree. Target encoding yields exactly one numeric column per raw column,
which keeps LightGBM's ``pred_contrib`` reasons one-to-one with what an
applicant typed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.compose import ColumnTransformer
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder, TargetEncoder

from src.config import Profile


def cast_frame(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Give every input column the one dtype the encoders expect (object codes, float numbers).

    Rows may arrive with pandas extension dtypes (Int64, string) from validation
    or with plain Python values from an API; after this step they look alike.
    """
    out = pd.DataFrame(index=df.index)
    for col in categorical:
        values = df[col].astype(object)
        out[col] = values.where(pd.notna(values), np.nan)
    for col in numeric:
        out[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return out[[*categorical, *numeric]]


def build_preprocessor(profile: Profile, target_encoder: dict[str, Any], seed: int) -> Pipeline:
    """Cast, then target-encode (cross-fitted), ordinal-encode and pass numerics through."""
    te_cols = list(profile.target_encode)
    ord_cols = profile.ordinal_features
    num_cols = profile.numeric_features
    transformers: list[tuple[str, Any, list[str]]] = []
    if te_cols:
        transformers.append((
            "target",
            TargetEncoder(
                target_type="binary",
                cv=StratifiedKFold(n_splits=int(target_encoder.get("cv", 5)), shuffle=True, random_state=seed),
                smooth=target_encoder.get("smooth", "auto"),
            ),
            te_cols,
        ))
    if ord_cols:
        categories = [list(profile.features[c].values or {}) for c in ord_cols]
        transformers.append((
            "ordinal",
            OrdinalEncoder(categories=categories, handle_unknown="use_encoded_value", unknown_value=np.nan,
                           encoded_missing_value=np.nan, dtype=np.float64),
            ord_cols,
        ))
    if num_cols:
        transformers.append(("numeric", "passthrough", num_cols))
    encode = ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)
    encode.set_output(transform="pandas")
    cast = FunctionTransformer(cast_frame, kw_args={"numeric": num_cols, "categorical": [*te_cols, *ord_cols]})
    return Pipeline([("cast", cast), ("encode", encode)])


def model_columns(profile: Profile) -> list[str]:
    """The encoded columns in the order :func:`build_preprocessor` emits them (and LightGBM sees them)."""
    return [*profile.target_encode, *profile.ordinal_features, *profile.numeric_features]


def monotone_constraints(profile: Profile) -> list[int] | None:
    """LightGBM's ``monotone_constraints`` (+1 / -1 / 0 per model column) from the profile's directions."""
    directions = profile.monotone
    if not directions:
        return None
    sign = {"increasing": 1, "decreasing": -1}
    return [sign[directions[c]] if c in directions else 0 for c in model_columns(profile)]


def build_classifier(lgbm_params: dict[str, Any], seed: int, monotone: list[int] | None = None) -> LGBMClassifier:
    extra = {"monotone_constraints": monotone} if monotone else {}
    return LGBMClassifier(random_state=seed, **lgbm_params, **extra)


def classifier_params(train_lgbm: dict[str, Any], profile: Profile) -> dict[str, Any]:
    """LightGBM's parameters for this profile: ``train.lgbm`` with the profile's own ``lgbm`` over it."""
    return {**train_lgbm, **profile.lgbm}


def fit_options(profile: Profile) -> dict[str, Any]:
    """Keyword arguments of ``LGBMClassifier.fit``: the columns LightGBM splits as categories."""
    return {"categorical_feature": list(profile.native_categorical)} if profile.native_categorical else {}


def assemble(preprocessor: Pipeline, classifier: LGBMClassifier) -> Pipeline:
    """The fitted preprocessor and classifier as the single served Pipeline."""
    return Pipeline([("preprocess", preprocessor), ("model", classifier)])
