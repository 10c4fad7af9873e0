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


def test_the_page_shows_the_second_test_what_fired_and_the_default_rates() -> None:
    """The tests that fired and the default rates per code are drift.json's, on the page as they are there."""
    s = summary()
    s["thresholds"].update({"alpha": 0.01, "tests": 4, "alpha_per_test": 0.0025, "ks_min_statistic": 0.05,
                            "js_min_distance": 0.05, "default_rate_min_difference": 0.03, "default_rate_min_rows": 30})
    s["features"]["sex"].update({
        "test": {"name": "chi-square", "statistic": 260.25, "p_value": 2.636e-53, "js_distance": 0.1117,
                 "fired": True},
        "fired_by": ["chi-square", "default-rate"],
        "default_rate": {"fired": True, "categories": [
            {"category": "1", "reference_rate": 0.1918, "batch_rate": 0.2437, "reference_rows": 7387,
             "batch_rows": 2146, "z": 5.26, "p_value": 1.477e-07, "fired": True},
            {"category": "3", "reference_rate": 0.2535, "batch_rate": 0.2385, "reference_rows": 3459,
             "batch_rows": 717, "z": -0.85, "p_value": 0.3977, "fired": False}]}})
    s["features"]["age"].update({"test": {"name": "ks", "statistic": 0.139, "p_value": 3.9e-63, "fired": True},
                                 "fired_by": ["psi", "ks"]})
    s["outcomes"] = {"rows": 200, "batch_default_rate": 0.22, "reference_default_rate": 0.22,
                     "categories_compared": 2, "alpha_per_category": 0.005}
    s["drifted_features"] = ["age", "sex"]
    page = drift_html.render(s)
    assert "<td>chi-square JS 0.112, p 2.6e-53</td><td>chi-square, default-rate</td><td>drifted</td>" in page
    assert "<td>KS D 0.139, p 3.9e-63</td><td>psi, ks</td><td>drifted</td>" in page
    rates = re.findall(r"<tr><td>sex</td><td>(\d)</td><td class=\"num\">([\d.]+)</td><td class=\"num\">([\d.]+)"
                       r"</td>.*?<td>(moved)?</td></tr>", page)
    assert rates == [("1", "0.192", "0.244", "moved"), ("3", "0.254", "0.238", "")]
    assert "Bonferroni" in page
