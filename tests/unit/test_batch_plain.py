"""The batch fast path for clean number chunks (src/batch/plain.py) gives what the general path gives.

Real taiwan_credit rows; the cells planted into them by hypothesis are SYNTHETIC defects
and edge values (bounds, codes just outside the list, NaN, infinities, huge integers).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from src.batch import chunk as chunk_module
from src.batch.chunk import BatchJob, score_chunk
from src.batch.inputs import ID_INT, ID_STR
from src.batch.run import load_job
from tests.conftest import TrainedProject


@pytest.fixture(scope="module")
def jobs(trained_project: TrainedProject) -> dict[str, BatchJob]:
    """Jobs as the CLI makes them: with reasons and features, the default (decline codes), a backtest."""
    def load(**kwargs) -> BatchJob:
        return replace(load_job(trained_project.settings, str(trained_project.model_dir), num_threads=1, **kwargs),
                       id_kind=ID_INT)
    return {"reasons": load(top_reasons=3, include_features=True), "default": load(),
            "backtest": load(adverse_action=False)}


@pytest.fixture(scope="module")
def clean(trained_project: TrainedProject) -> pd.DataFrame:
    """120 real rows as Parquet gives them: int64 codes and ids, float64 amounts."""
    raw = pd.read_parquet(trained_project.settings.raw_table).head(120).reset_index(drop=True)
    profile = trained_project.settings.profile
    frame = raw[[profile.id_column, *profile.features]].copy()
    for name, spec in profile.features.items():
        frame[name] = frame[name].astype(np.int64 if spec.is_categorical else np.float64)
    return frame.astype({profile.id_column: np.int64})


def general(job: BatchJob) -> BatchJob:
    """The same job with the fast path switched off."""
    copy = replace(job)
    copy.__dict__["plain_plan"] = None  # the cached property, answered in advance
    return copy


def assert_same(frame: pd.DataFrame, job: BatchJob) -> bool:
    """Both paths give identical tables and counts; True when the fast path took the chunk."""
    fast, slow = score_chunk(frame, job, first_row=7), score_chunk(frame, general(job), first_row=7)
    assert fast.scored.equals(slow.scored)
    assert fast.rejects.equals(slow.rejects)
    assert fast.counts == slow.counts
    return job.plain_plan.read(frame.reset_index(drop=True), job.scorer) is not None


def test_clean_parquet_rows_take_the_fast_path_with_the_same_output(jobs, clean) -> None:
    for job in jobs.values():
        assert job.plain_plan is not None
        assert assert_same(clean, job)
    # ids as row numbers: the same
    no_ids = replace(jobs["default"], id_kind=None)
    assert assert_same(clean.drop(columns=["id"]), no_ids)


def test_the_general_path_is_taken_for_what_the_fast_path_does_not_judge(jobs, clean, monkeypatch) -> None:
    job = jobs["default"]
    calls: list[int] = []
    real = chunk_module._judge

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(chunk_module, "_judge", counted)
    score_chunk(clean, job, 0)
    assert calls == []
    variants = {
        "text amounts": clean.astype({"limit_bal": str}),
        "nullable codes": clean.astype({"education": "Int64"}),
        "float codes": clean.astype({"education": np.float64}),
        "an amount out of bounds": clean.assign(pay_0=clean["pay_0"].where(clean.index != 8, 12.0)),
        "a missing amount": clean.assign(bill_amt1=clean["bill_amt1"].where(clean.index != 3)),
        "a code off the list": clean.assign(education=clean["education"].where(clean.index != 5, 99)),
    }
    for name, frame in variants.items():
        before = len(calls)
        assert not assert_same(frame, job), name
        assert len(calls) == before + 2, name  # both runs of assert_same went the general way
    # a missing column (the CLI stops at it before any chunk is read): not the fast path's to judge
    assert job.plain_plan.read(clean.drop(columns=["pay_amt6"]), job.scorer) is None
    assert replace(job, id_kind=ID_STR).plain_plan is None  # text ids: always the general path


EDGES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 2**53, 2**53 + 1, -(2**53) - 1,
                     1e6, 1e6 + 1, 9.999e5, -1e-300, 0.0, -0.0]))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_planted_values_give_the_same_output_either_way(jobs, clean, data) -> None:
    """Whatever lands in a clean chunk, both paths agree; the fast path judges only what it may."""
    job = jobs[data.draw(st.sampled_from(sorted(jobs)))]
    frame = clean.head(data.draw(st.integers(1, len(clean)))).copy()
    for _ in range(data.draw(st.integers(0, 4))):
        column = data.draw(st.sampled_from(list(job.profile.features)))
        row = data.draw(st.integers(0, len(frame) - 1))
        value = data.draw(EDGES)
        if frame[column].dtype == np.int64:
            if isinstance(value, float) and not value.is_integer():
                continue  # an int64 column holds integers only (a float column is a dtype of its own)
            value = int(value) if -(2**63) <= value < 2**63 else 0
        frame.loc[row, column] = value
    assert_same(frame, job)
