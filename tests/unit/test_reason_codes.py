"""Adverse-action reason codes: every input has one, and a principal reason is never a protected attribute
nor a factor that lowered the risk, even from a research model trained on the protected attributes."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from src.config import ConfigError, settings_from_dict
from src.modeling.train import train_model
from src.scoring.scorer import Scorer, principal_reasons
from tests.conftest import TrainedProject, load_params, plain_rows

PARAMS = load_params()


@pytest.mark.parametrize("dataset", sorted(PARAMS["profiles"]))
def test_every_input_has_a_unique_reason_code_and_statement(dataset: str, tmp_path) -> None:
    profile = settings_from_dict({**copy.deepcopy(PARAMS), "dataset": dataset}, tmp_path).profile
    codes = [spec.reason_code for spec in profile.features.values()]
    assert all(codes) and len(set(codes)) == len(codes)
    assert all(spec.reason and spec.reason[0].isupper() for spec in profile.features.values())


@pytest.mark.parametrize(("change", "needle"), [
    (lambda p: p["features"]["pay_0"].pop("reason_code"), "features.pay_0' needs reason_code and reason"),
    (lambda p: p["features"]["pay_0"].update(reason_code="TC01"), "reason codes ['TC01'] to more than one input"),
    (lambda p: p["features"]["pay_0"].update(reason_code="late!"), "features.pay_0.reason_code"),
    (lambda p: p["protected"]["sex"].update(reason_code="X1", reason="Sex"), "a protected attribute is never a reason"),
])
def test_reason_code_mistakes_name_the_key(change, needle: str, tmp_path) -> None:
    params = copy.deepcopy(PARAMS)
    params["dataset"] = "taiwan_credit"
    change(params["profiles"]["taiwan_credit"])
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        settings_from_dict(params, tmp_path)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 12)),
              elements=st.floats(-5, 5, allow_nan=False)),
       st.data(), st.integers(0, 6))
def test_principal_reasons_only_raise_only_eligible_largest_first(contrib, data, top) -> None:
    rows, n = contrib.shape
    eligible = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    with_bias = np.hstack([contrib, np.full((rows, 1), 9.0)])  # the bias column is never a reason
    order = principal_reasons(with_bias, eligible, top)
    assert order.shape == (rows, min(top, n))
    for i in range(rows):
        chosen = [j for j in order[i] if j >= 0]
        assert all(eligible[j] and contrib[i, j] > 0 for j in chosen)
        assert [contrib[i, j] for j in chosen] == sorted((contrib[i, j] for j in chosen), reverse=True)
        assert all(j < 0 for j in order[i][len(chosen):])  # padding only at the end
        rest = [contrib[i, j] for j in range(n) if eligible[j] and contrib[i, j] > 0 and j not in chosen]
        assert len(chosen) == min(top, len(chosen) + len(rest))
        assert not (rest and chosen) or min(contrib[i, j] for j in chosen) >= max(rest)
    one = principal_reasons(with_bias[0], eligible, top)
    np.testing.assert_array_equal(one, order[0])  # one row gives the same as the batch's first


def test_a_research_model_never_gives_a_protected_attribute_as_a_reason(trained_project: TrainedProject) -> None:
    """Trained with fairness.use_protected (sex, marriage, age as inputs), where they do move the risk: still
    never a principal reason, and every reason it gives carries its code."""
    params = copy.deepcopy(PARAMS)
    params["fairness"]["use_protected"] = True
    research = settings_from_dict(params, trained_project.root)
    train, valid, test = (pd.read_parquet(trained_project.settings.split_table(s)) for s in ("train", "valid", "test"))
    result = train_model(train, valid, research)
    assert {"sex", "marriage", "age"} <= set(result.meta["features"])
    profile = research.profile.with_inputs(result.meta["features"])
    scorer = Scorer(result.pipeline, result.meta, profile, top_reasons=len(profile.features))
    rows = test[result.meta["features"]].head(400)
    plain = plain_rows(rows, profile)
    contrib = scorer.contributions(scorer.encode(plain))
    protected = [scorer.columns.index(c) for c in ("sex", "marriage", "age")]
    assert (contrib[:, protected] > 0).any(), "the protected inputs never raised the risk: the test proves nothing"
    declined = 0
    for result_row in scorer.score(plain, with_reasons=False):
        for reason in result_row["adverse_action"]:
            assert reason["feature"] not in {"sex", "marriage", "age"}
            assert reason["code"] == profile.features[reason["feature"]].reason_code
        declined += result_row["decision"] != "approve"
    assert declined > 20
