"""The drift page is drawn from drift.json's own numbers: same drifted features, PSI and bands, escaped."""

from __future__ import annotations

import re

from src.monitoring import drift_html


def summary() -> dict:
    bins = [{"bin": "(-inf, 1]", "reference": 0.5, "batch": 0.2}, {"bin": "(1, inf)", "reference": 0.5, "batch": 0.8}]
    return {
        "dataset": "taiwan_credit", "created_at": "2026-12-04T00:00:00+00:00", "n_reference": 1000, "n_batch": 200,
        "model": {"name": "m", "version": "3"}, "batch": {"source": "batch <b>.csv"},
        "thresholds": {"moderate": 0.1, "significant": 0.25, "flag_band": "moderate", "bins": 10, "epsilon": 1e-4},
        "features": {"age": {"type": "numeric", "psi": 0.41234, "band": "significant", "bins": bins},
                     "sex": {"type": "categorical", "psi": 0.0123, "band": "none", "bins": bins},
                     "limit_bal": {"type": "numeric", "psi": 0.1500, "band": "moderate", "bins": bins}},
        "score": {"type": "score", "psi": 0.05, "band": "none", "bins": bins},
        "drifted_features": ["age", "limit_bal"], "score_drifted": False, "flag": True,
    }


def test_the_page_marks_exactly_the_drifted_features_with_their_psi() -> None:
    page = drift_html.render(summary())
    marked = re.findall(r"<tr><td>([\w ()]+)</td><td>\w+</td><td class=\"num\">([\d.]+)</td><td>.*?</td>"
                        r"<td>drifted</td></tr>", page)
    assert dict(marked) == {"age": "0.4123", "limit_bal": "0.1500"}
    assert "FLAGGED: age, limit_bal" in page and "0.0123" in page
    assert page.index(">age<") < page.index(">limit_bal<") < page.index(">sex<")  # by PSI, largest first


def test_the_page_escapes_what_it_shows_and_needs_nothing_external() -> None:
    page = drift_html.render(summary())
    assert "batch &lt;b&gt;.csv" in page and "<b>.csv" not in page
    assert "<script" not in page and "http" not in page


def test_an_unflagged_summary_says_so() -> None:
    quiet = {**summary(), "drifted_features": [], "flag": False}
    assert "no drift flagged" in drift_html.render(quiet)
