"""SYNTHETIC test data. Never used for any figure about model quality.

The labelled Risk_Flag training file ("Training Data.csv") is not available
here, so tests build a stand-in from the *real* unlabeled rows of the Kaggle
"Test Data.csv" and attach a synthetic ``Risk_Flag`` drawn from a known
logistic function of the features. The file keeps the real file's header
(``Id`` ... ``Risk_Flag``) and its raw quirks (footnote marks in CITY/STATE).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

RISK_FLAG_HEADER = ["Id", "Income", "Age", "Experience", "Married/Single", "House_Ownership", "Car_Ownership",
                    "Profession", "CITY", "STATE", "CURRENT_JOB_YRS", "CURRENT_HOUSE_YRS", "Risk_Flag"]


def synthetic_risk_flag(unlabeled_csv: Path, rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Real unlabeled Risk_Flag rows + a SYNTHETIC label (about 12 % positives, like the real file)."""
    df = pd.read_csv(unlabeled_csv)
    if rows is not None and rows < len(df):
        df = df.sample(n=rows, random_state=seed).sort_index()
    rng = np.random.default_rng(seed)
    states = sorted(df["STATE"].unique())
    state_effect = dict(zip(states, rng.normal(0, 1.0, len(states)), strict=True))
    logit = (-1.2
             - 2.0 * (df["Income"] / 1e7)
             - 0.3 * (df["Age"] - 50) / 10
             + 1.2 * (df["House_Ownership"] == "rented")
             - 0.8 * (df["Car_Ownership"] == "yes")
             - 0.12 * df["CURRENT_JOB_YRS"]
             + df["STATE"].map(state_effect))
    label = rng.random(len(df)) < 1 / (1 + np.exp(-logit))
    out = df.rename(columns={"ID": "Id"})
    out["Risk_Flag"] = label.astype(int)
    return out[RISK_FLAG_HEADER].reset_index(drop=True)


def write_synthetic_risk_flag(unlabeled_csv: Path, dest_dir: Path, rows: int | None = None, seed: int = 0) -> Path:
    """Write the SYNTHETIC stand-in as dest_dir/'Training Data.csv' (CRLF, as the real file)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / "Training Data.csv"
    synthetic_risk_flag(unlabeled_csv, rows, seed).to_csv(path, index=False, lineterminator="\r\n")
    return path
