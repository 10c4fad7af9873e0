"""SYNTHETIC data for the monitoring tests. Never used for any figure about model quality."""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_taiwan_applicants(rows: int, seed: int = 0) -> pd.DataFrame:
    """SYNTHETIC stand-in for the UCI taiwan_credit file (its raw header), label from a known logit."""
    rng = np.random.default_rng(seed)
    limit = (rng.lognormal(11.7, 0.75, rows).clip(10000, 1000000)).round(-4)
    age = rng.gamma(9, 4, rows).clip(21, 79).round()
    pay = {f"PAY_{i}": rng.choice([-2, -1, 0, 1, 2], rows, p=[0.15, 0.2, 0.5, 0.1, 0.05]) for i in (0, 2, 3, 4, 5, 6)}
    bills = {f"BILL_AMT{i}": (limit * rng.uniform(0, 0.8, rows)).round() for i in range(1, 7)}
    paid = {f"PAY_AMT{i}": (rng.exponential(5000, rows)).round() for i in range(1, 7)}
    logit = -1.3 + 0.6 * pay["PAY_0"] - 0.3 * np.log(limit / 1e5) - 0.01 * (age - 35)
    frame = pd.DataFrame({"ID": np.arange(1, rows + 1), "LIMIT_BAL": limit,
                          "SEX": rng.choice([1, 2], rows, p=[0.4, 0.6]),
                          "EDUCATION": rng.choice([1, 2, 3, 4], rows, p=[0.35, 0.47, 0.16, 0.02]),
                          "MARRIAGE": rng.choice([1, 2, 3], rows, p=[0.45, 0.53, 0.02]), "AGE": age,
                          **pay, **bills, **paid})
    frame["default.payment.next.month"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def synthetic_score(frame: pd.DataFrame) -> pd.Series:
    """SYNTHETIC stand-in for a model: a fixed logistic score of a few snake_case fields."""
    logit = -1.3 + 0.6 * frame["pay_0"].astype(float) - 0.3 * np.log(frame["limit_bal"].astype(float) / 1e5)
    return 1 / (1 + np.exp(-logit))


def synthetic_scored(rows: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """SYNTHETIC scored rows (batch-scorer columns) and outcomes drawn from the score (calibrated by design)."""
    rng = np.random.default_rng(seed)
    proba = rng.uniform(0.01, 0.9, rows)
    decision = np.where(proba >= 0.5, "decline", np.where(proba >= 0.4, "refer", "approve"))
    scored = pd.DataFrame({"id": np.arange(rows), "probability": proba, "decision": decision,
                           "scored_at": pd.Timestamp("2026-11-02", tz="UTC") + pd.to_timedelta(
                               np.arange(rows) % 21, unit="D"),
                           "model_name": "credit-default-x", "model_version": "3"})
    labels = pd.DataFrame({"id": np.arange(rows).astype(str), "default": (rng.random(rows) < proba).astype(int)})
    return scored, labels
