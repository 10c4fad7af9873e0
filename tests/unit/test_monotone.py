"""Declared risk directions hold on the served model: sweeping a constrained input over its range on real
applicants never moves the probability against its direction, by every path that scores (the service's
single-row and reasons paths, batch scoring, the MLflow pyfunc)."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from src.batch.chunk import score_chunk
from src.batch.run import load_job
from src.modeling.pyfunc_model import OUTPUT_COLUMN
from tests.conftest import TrainedProject, plain_rows

APPLICANTS = 12
STEPS = 24


@pytest.fixture(scope="module")
def sweep(trained_project: TrainedProject):
    """For each constrained input: real test applicants, each with that input swept over a grid of its range."""
    job = load_job(trained_project.settings, str(trained_project.model_dir), num_threads=1)
    profile = job.scorer.profile
    summary = job.scorer.meta["feature_summary"]
    test = pd.read_parquet(trained_project.settings.split_table("test")).sample(APPLICANTS, random_state=7)
    base = plain_rows(test, profile)
    grids = {}
    for name in profile.monotone:
        spec = profile.features[name]
        if spec.is_categorical:
            grids[name] = list(spec.values or {})  # ordinal: in the declared order
        else:
            inner = np.linspace(summary[name]["p01"], summary[name]["p99"], STEPS).tolist()
            grids[name] = sorted({spec.min, *inner, spec.max})
    return job, base, grids


def _check(probabilities: np.ndarray, direction: str, where: str) -> None:
    steps = np.diff(probabilities)
    against = steps < -1e-12 if direction == "increasing" else steps > 1e-12
    assert not against.any(), f"{where}: moves against '{direction}' by {np.abs(steps[against]).max():.3g}"


def test_the_trained_model_is_constrained(sweep) -> None:
    job, _, grids = sweep
    assert len(grids) >= 10  # taiwan_credit: limit_bal, six repayment statuses, six amounts paid
    params = job.scorer.booster.params
    constraints = params.get("monotone_constraints")
    assert constraints and any(int(c) != 0 for c in constraints)


def test_served_probabilities_follow_the_declared_directions(sweep) -> None:
    job, base, grids = sweep
    scorer, directions = job.scorer, job.scorer.profile.monotone
    moved = 0
    for name, grid in grids.items():
        for i, row in enumerate(base):
            swept = [{**row, name: value} for value in grid]
            one_by_one = np.array([scorer.score([r])[0]["probability_of_default"] for r in swept])
            with_reasons = np.array([r["probability_of_default"] for r in scorer.score(swept, with_reasons=True)])
            _check(one_by_one, directions[name], f"single row, {name}, applicant {i}")
            _check(with_reasons, directions[name], f"with reasons, {name}, applicant {i}")
            np.testing.assert_allclose(with_reasons, one_by_one, rtol=1e-9, atol=1e-12)
            moved += one_by_one.max() - one_by_one.min() > 1e-6
    assert moved > 0, "no sweep moved the probability at all: the test would prove nothing"


def test_batch_and_pyfunc_follow_the_declared_directions(sweep, trained_project: TrainedProject) -> None:
    job, base, grids = sweep
    directions = job.scorer.profile.monotone
    pyfunc = mlflow.pyfunc.load_model(str(trained_project.model_dir))
    for name, grid in grids.items():
        rows = [{**row, name: value} for row in base for value in grid]
        frame = pd.DataFrame(rows)
        batch = score_chunk(frame, job, first_row=0)
        assert batch.rejects.num_rows == 0
        by_batch = batch.scored.column("probability").to_numpy().reshape(len(base), len(grid))
        typed = frame.astype({c: "float64" for c in frame.columns if not job.scorer.profile.features[c].is_categorical})
        by_pyfunc = pyfunc.predict(typed)[OUTPUT_COLUMN].to_numpy().reshape(len(base), len(grid))
        for i in range(len(base)):
            _check(by_batch[i], directions[name], f"batch, {name}, applicant {i}")
            _check(by_pyfunc[i], directions[name], f"pyfunc, {name}, applicant {i}")
        np.testing.assert_allclose(by_batch, by_pyfunc, rtol=1e-9, atol=1e-12)
