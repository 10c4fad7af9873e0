"""The decision lookup page (flask_api/review.py): reviewers only, the record as the applicant received it."""

from __future__ import annotations

import re
from typing import Any

from src.auth.store import set_user
from tests.conftest import default_applicant
from tests.unit.test_access import (  # noqa: F401  (secured_fixture registers the fixture "secured")
    PASSWORD,
    PREDICT,
    Secured,
    bearer,
    secured_fixture,
    sign_in,
)


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', html, re.S)
    assert match, f"no element #{element_id}"
    return " ".join(re.sub(r"<[^>]+>", " ", match.group(2)).split())


def reviewer(secured: Secured, address: str = "10.0.0.7") -> Any:
    set_user(secured.file, "rita", PASSWORD, "review")
    c = secured.client(address)
    assert sign_in(c, "rita", PASSWORD, next_path="/decisions").status_code == 302
    return c


def test_only_signed_in_reviewers_may_look_up_decisions(secured: Secured) -> None:
    first = secured.client().get("/decisions")
    assert first.status_code == 302 and first.headers["Location"].startswith("/login?next=/decisions")
    officer = secured.client("10.0.0.3")
    sign_in(officer, "alice", PASSWORD)
    refused = officer.get("/decisions")
    assert refused.status_code == 403 and "may not look up decisions" in refused.get_data(as_text=True)
    form = officer.get("/").get_data(as_text=True)  # the header links only the pages a user may open
    assert 'href="/">Score</a>' in form and 'href="/decisions"' not in form
    page = reviewer(secured).get("/decisions")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'name="reference"' in html
    assert 'href="/decisions">Look up a decision</a>' in html and 'href="/">Score</a>' not in html
    set_user(secured.file, "ada", PASSWORD, "admin")
    admin = secured.client("10.0.0.8")
    sign_in(admin, "ada", PASSWORD)
    both = admin.get("/").get_data(as_text=True)
    assert 'href="/">Score</a>' in both and 'href="/decisions">Look up a decision</a>' in both
    # who may look decisions up finds the record from the result page
    form = {**{k: str(v) for k, v in secured.body()["applicants"][0].items()},
            "csrf_token": re.search(r'name="csrf_token"[^>]*value="([^"]+)"', both).group(1)}
    result = admin.post("/", data=form).get_data(as_text=True)
    reference = re.search(r"Reference <code>([^<]+)</code>", result).group(1)
    assert f'href="/decisions?reference={reference}" id="record-link"' in result
    # the JSON record too: a review key may read it, a score key may not
    assert secured.client().get("/api/v1/decisions/01234567-89ab-7cde-8f01-23456789abcd",
                                headers=bearer(secured.keys["review"])).status_code == 404
    assert secured.client().get("/api/v1/decisions/01234567-89ab-7cde-8f01-23456789abcd",
                                headers=bearer(secured.keys["score"])).status_code == 403


def test_a_decision_reads_as_it_was_given(secured: Secured) -> None:
    """A decline made through the API: the page shows its time, channel, requester, model, probability,
    decision, every principal reason (code, statement, value) exactly as the API gave them, and the answers."""
    svc = secured.app.extensions["credit_service"]
    applicant = {**default_applicant(svc.model().meta), "pay_0": 8, "pay_2": 7}
    answer = secured.client().post(PREDICT, json={"applicants": [applicant]},
                                   headers=bearer(secured.keys["score"])).json
    given = answer["results"][0]
    assert given["decision"] != "approve" and given["adverse_action"], given
    assert svc.predlog.flush(10)
    c = reviewer(secured)
    page = c.get(f"/decisions?reference=%20{answer['request_id'].upper()}%20")  # pasted with spaces, any case
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html[:500]
    assert answer["request_id"] in text_of(html, "record-title")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text_of(html, "record-time"))
    assert text_of(html, "record-source") == "the API"
    assert text_of(html, "record-requested-by") == f"key:{secured.keys['score'].split('_')[1]}"
    assert text_of(html, "record-model") == f"{answer['model']['name']}, version {answer['model']['version']}"
    shown = text_of(html, "applicant-0")
    assert f"{given['probability_of_default'] * 100:.1f}%" in shown and given["decision"].capitalize() in shown
    reasons = re.findall(r'<li class="adverse-reason">(.*?)</li>', html, re.S)
    expected = [f"{a['code']} {a['reason']}: {a['value']}" for a in given["adverse_action"]]
    assert [" ".join(re.sub(r"<[^>]+>", " ", r).split()) for r in reasons] == expected
    profile = svc.model().scorer.profile
    for name, spec in profile.features.items():
        assert f"<dt>{spec.label}</dt>" in html, name


def test_unknown_and_malformed_references_say_so(secured: Secured) -> None:
    c = reviewer(secured)
    unknown = c.get("/decisions?reference=01234567-89ab-7cde-8f01-23456789abcd")
    assert unknown.status_code == 404 and "No decision with this reference" in text_of(
        unknown.get_data(as_text=True), "lookup-error")
    bad = c.get("/decisions?reference=not-a-reference")
    assert bad.status_code == 404 and "A reference looks like" in bad.get_data(as_text=True)
    assert "record-title" not in bad.get_data(as_text=True)
