"""The registered MLflow model: raw applicant columns in, probability of default out.

It wraps the very ``models/model.joblib`` Pipeline the pipeline evaluated, so
``mlflow.pyfunc.load_model(...)`` gives exactly the probabilities of the joblib
file. The project's ``src`` package travels inside the model (code_paths), so an
exported model directory loads with no checkout and no tracking server.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema

from src.config import Profile

OUTPUT_COLUMN = "probability_of_default"

# What a serving environment must install to load the model (no slow inference).
REQUIREMENTS = ("mlflow", "lightgbm", "scikit-learn", "pandas", "numpy", "joblib", "pyyaml")


class CreditDefaultModel(PythonModel):
    """MLflow pyfunc around the sklearn Pipeline saved by the train stage."""

    def load_context(self, context: Any) -> None:
        self.pipeline = joblib.load(context.artifacts["pipeline"])
        with open(context.artifacts["meta"], encoding="utf-8") as fh:
            self.meta = json.load(fh)
        # The fairness stage's verdict travels with the model (models registered before it have none).
        self.fairness: dict[str, Any] | None = None
        if "fairness" in context.artifacts:
            with open(context.artifacts["fairness"], encoding="utf-8") as fh:
                self.fairness = json.load(fh).get("gate")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        proba = self.pipeline.predict_proba(frame[self.meta["features"]])[:, 1]
        return pd.DataFrame({OUTPUT_COLUMN: proba}, index=frame.index)


def signature_for(profile: Profile) -> ModelSignature:
    """Input schema from the profile (not inferred from data), one probability out."""
    columns = []
    for name, spec in profile.features.items():
        kind = "double" if not spec.is_categorical else ("long" if spec.value_kind is int else "string")
        columns.append(ColSpec(kind, name, required=not spec.nullable))
    return ModelSignature(inputs=Schema(columns), outputs=Schema([ColSpec("double", OUTPUT_COLUMN)]))


def example_rows(frame: pd.DataFrame, profile: Profile, rows: int = 3) -> pd.DataFrame:
    """A few applicants with the plain dtypes the signature declares (no pandas extension types)."""
    example = frame[profile.feature_names].head(rows).copy()
    for name, spec in profile.features.items():
        if not spec.is_categorical:
            example[name] = example[name].astype("float64")
        elif spec.value_kind is int:
            example[name] = example[name].astype("int64")
        else:
            example[name] = example[name].astype(object)
    return example.reset_index(drop=True)


def code_dir() -> Path:
    """The ``src`` package that is running now: bundled into the model so it loads anywhere."""
    return Path(__file__).resolve().parents[1]


def pip_requirements() -> list[str]:
    return [f"{pkg}=={version(pkg)}" for pkg in REQUIREMENTS]
