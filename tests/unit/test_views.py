"""The loan-officer web form through Flask's test client, on the small real model, with CSRF enforced."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, render_template
from werkzeug.datastructures import MultiDict

from flask_api import create_app
from flask_api.forms import default_values, field_infos, fmt_number, form_class
from src.config import build_profile
from src.scoring.logdb import make_engine, predictions
from src.scoring.scorer import readable_number
from tests.conftest import TrainedProject, default_applicant, load_params


class Page(HTMLParser):
    """The parts of a page the tests look at: each element's attributes by id, each label's target."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.html = html
        self.by_id: dict[str, dict[str, str]] = {}
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if "id" in values:
            self.by_id[values["id"]] = {"tag": tag, **values}

    def text_of(self, element_id: str) -> str:
        """Visible text of the element with ``element_id`` (up to its closing tag, tags stripped)."""
        match = re.search(rf'<(\w+)[^>]*\bid="{re.escape(element_id)}"[^>]*>(.*?)</\1>', self.html, re.S)
        assert match, f"no element #{element_id}"
        return " ".join(re.sub(r"<[^>]+>", " ", match.group(2)).split())

    def block(self, element_id: str) -> str:
        """The HTML from the element with ``element_id`` to the start of the next form field."""
        start = self.html.index(f'id="{element_id}"')
        following = re.compile(r'class="field[ "]').search(self.html, start + 1)
        return self.html[start:following.start() if following else None]


def meta_of(app: Flask) -> dict[str, Any]:
    return app.extensions["credit_service"].model().meta


def logged(app: Flask) -> int:
    return app.extensions["credit_service"].predlog.count()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def form_data(client, app: Flask, **changes: Any) -> dict[str, str]:
    """What a browser would post: the typical applicant as text, the page's token, then ``changes``."""
    page = client.get("/")
    data = {k: fmt_number(v) if isinstance(v, float) else str(v) for k, v in default_applicant(meta_of(app)).items()}
    data["csrf_token"] = csrf_token(page.get_data(as_text=True))
    data.update({k: str(v) for k, v in changes.items()})
    return data


def test_form_renders_every_field_with_human_labels_and_defaults(client, app) -> None:
    resp = client.get("/")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    page = Page(html)
    model = app.extensions["credit_service"].model()
    profile = model.scorer.profile
    assert "Score a loan applicant" in html
    assert model.name in html and f"version <strong>{model.version}</strong>" in html
    labels = {attrs["for"] for tag, attrs in page.tags if tag == "label" and "for" in attrs}
    summary = meta_of(app)["feature_summary"]
    for name, spec in profile.features.items():
        assert name in labels, f"no <label for={name}>"
        assert spec.label in html
        element = page.by_id[name]
        default = summary[name]["default"]
        if spec.values is not None:
            assert element["tag"] == "select"
            selected = re.search(rf'<option selected value="{default}">([^<]*)</option>', page.block(name))
            assert selected and selected.group(1) == spec.values[default], f"{name}: default not selected"
        else:
            assert element["tag"] == "input" and element["type"] == "number"
            assert element["value"] == fmt_number(default)
            assert element["min"] == fmt_number(spec.min) and element["max"] == fmt_number(spec.max)
            assert f"{name}-hint" in element["aria-describedby"]
    assert '<option value="1">graduate school</option>' in html or \
        '<option selected value="1">graduate school</option>' in html
    assert "From 0 to 10,000,000 NT$." in page.text_of("pay_amt1-hint")
    for protected in profile.protected:  # prohibited bases are never asked for
        assert protected not in page.by_id and f'name="{protected}"' not in html
    assert page.text_of("limit_bal-unit") == "NT$"
    assert page.by_id["limit_bal"]["aria-describedby"] == "limit_bal-hint limit_bal-unit"


def test_page_uses_only_local_assets(client) -> None:
    html = client.get("/").get_data(as_text=True)
    assert not re.search(r'(src|href)="(https?:)?//', html), "external asset referenced"
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        resp = client.get(asset)
        assert resp.status_code == 200 and resp.data, asset
    assert client.get("/static/style.css").mimetype == "text/css"


def test_valid_post_shows_result_and_logs_one_row(client, app) -> None:
    data = form_data(client, app)
    resp = client.post("/", data=data)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    page = Page(html)
    model = app.extensions["credit_service"].model()
    row = {**default_applicant(model.meta)}
    expected = model.scorer.score([row])[0]
    assert page.text_of("probability") == f"{expected['probability_of_default'] * 100:.1f}%"
    assert page.text_of("decision") == expected["decision"].capitalize()
    assert f"decision-{expected['decision']}" in page.by_id["decision"]["class"]
    assert "threshold" in page.text_of("decision-words")
    assert "Pushed the risk up" in html and "Pushed the risk down" in html
    up, down = page.text_of("reasons-up"), page.text_of("reasons-down")
    for reason in expected["reasons"]:
        assert reason["label"] in (up if reason["direction"] == "raises" else down)
    assert not re.search(r"\de[+-]\d", up + down), "numbers must read as numbers, not 2.309e+04"
    raises = [r["label"] for r in expected["reasons"] if r["direction"] == "raises"]
    if len(raises) > 1:  # in order of size
        assert up.index(raises[0]) < up.index(raises[1])
    assert f"version {model.version}" in page.text_of("model-line")
    assert logged(app) == 1


def test_a_decision_that_cannot_be_recorded_is_not_shown(client, app) -> None:
    """The spool cannot be written (closed here; a full disk in life): a 503 page that says why, no decision."""
    data = form_data(client, app)
    app.extensions["credit_service"].predlog.close()
    resp = client.post("/", data=data)
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    html = resp.get_data(as_text=True)
    assert "could not be put on record, so none was made" in html
    assert 'id="decision"' not in html and "Traceback" not in html


def test_change_the_answers_reopens_the_form_filled_in_without_scoring(client, app) -> None:
    result = client.post("/", data=form_data(client, app, pay_amt1=41))
    html = result.get_data(as_text=True)
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
    assert hidden["pay_amt1"] == "41"
    resp = client.post("/", data={**hidden, "edit": "1"})
    assert resp.status_code == 200
    page = Page(resp.get_data(as_text=True))
    assert page.by_id["pay_amt1"]["value"] == "41"
    assert "field-error" not in page.html
    assert logged(app) == 1


def test_invalid_value_is_reported_beside_the_field_and_not_scored(client, app) -> None:
    data = form_data(client, app, pay_0=12, limit_bal=123456)
    resp = client.post("/", data=data)
    assert resp.status_code == 422
    page = Page(resp.get_data(as_text=True))
    assert "Repayment status, September must be at most 9 months late" in page.text_of("pay_0-error")
    group = page.block("pay_0-field")
    assert 'id="pay_0-error"' in group and 'id="pay_0"' in group
    assert page.by_id["pay_0"]["aria-invalid"] == "true"
    assert "pay_0-error" in page.by_id["pay_0"]["aria-describedby"].split()
    assert page.by_id["pay_0"]["value"] == "12"
    assert page.by_id["limit_bal"]["value"] == "123456"  # other answers kept
    assert "aria-invalid" not in page.by_id["limit_bal"]
    assert 'href="#pay_0"' in page.html  # the error summary links to the field
    assert logged(app) == 0


def test_post_without_or_with_a_forged_csrf_token_is_rejected(client, app) -> None:
    data = form_data(client, app)
    del data["csrf_token"]
    resp = client.post("/", data=data)
    assert resp.status_code == 400
    assert "nothing was recorded" in resp.get_data(as_text=True)
    assert client.post("/", data={**data, "csrf_token": "forged"}).status_code == 400
    assert client.post("/", json={"limit_bal": 30}).status_code == 400
    assert logged(app) == 0


@pytest.mark.parametrize(("changes", "field", "message"), [
    ({"pay_amt1": "abc"}, "pay_amt1", "Amount paid, September must be a number"),
    ({"pay_amt1": "nan"}, "pay_amt1", "Amount paid, September must be a finite number"),
    ({"pay_amt1": "1e400"}, "pay_amt1", "Amount paid, September must be a finite number"),
    ({"pay_amt1": "  "}, "pay_amt1", "Amount paid, September is required"),
    ({"limit_bal": "0"}, "limit_bal", "Credit limit must be at least 1 NT$"),
    ({"education": "9"}, "education", "Education must be one of 0 (unknown (code 0)), 1 (graduate school)"),
    ({"education": "graduate school"}, "education", "Education must be one of"),
    ({"education": "1.5"}, "education", "Education must be one of"),
    ({"pay_0": "<script>alert(1)</script>"}, "pay_0", "must be a number"),
])
def test_malformed_values_are_field_errors_not_500(client, app, changes: dict[str, str], field: str,
                                                   message: str) -> None:
    resp = client.post("/", data=form_data(client, app, **changes))
    assert resp.status_code == 422
    page = Page(resp.get_data(as_text=True))
    assert message in page.text_of(f"{field}-error")
    assert "<script>alert(1)</script>" not in page.html  # echoed values are escaped
    assert logged(app) == 0


def test_missing_fields_and_unknown_extras(client, app) -> None:
    data = form_data(client, app)
    del data["pay_amt1"], data["education"]
    resp = client.post("/", data=data)
    assert resp.status_code == 422
    page = Page(resp.get_data(as_text=True))
    assert "Amount paid, September is required" in page.text_of("pay_amt1-error")
    assert "Education is required" in page.text_of("education-error")
    # unknown keys, protected attributes among them, are ignored: never read, never scored, never logged
    extra = form_data(client, app, unknown_field="x", edit="", sex="2", age="30")
    assert client.post("/", data=extra).status_code == 200
    assert logged(app) == 1
    predlog = app.extensions["credit_service"].predlog
    engine = make_engine(predlog.url)
    try:
        with engine.connect() as conn:
            features = conn.execute(sa.select(predictions.c.features)).scalars().one()
    finally:
        engine.dispose()
    assert set(features) == set(meta_of(app)["features"])  # the model's inputs, nothing else
    assert not {"sex", "age", "marriage", "unknown_field"} & set(features)


def test_no_model_yet_gives_a_friendly_503(trained_project: TrainedProject, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
    app = create_app({"SETTINGS": trained_project.settings, "MODEL_URI": str(trained_project.model_dir),
                      "MODEL_LOADING": "none", "TESTING": True})
    try:
        resp = app.test_client().get("/")
        assert resp.status_code == 503
        assert resp.headers["Retry-After"]
        html = resp.get_data(as_text=True)
        assert "Scoring is not available yet" in html and "Traceback" not in html
        assert app.test_client().post("/", data={"limit_bal": "30"}).status_code == 400  # CSRF is checked first
    finally:
        app.extensions["credit_service"].predlog.dispose()


@pytest.mark.parametrize(("value", "text"), [(23093.5, "23,094"), (10_000_000.0, "10,000,000"), (0.1189, "0.1189"),
                                            (-2.0, "-2"), (5.5, "5.5"), (0.00001234, "0.00001234")])
def test_numbers_read_without_exponents(value: float, text: str) -> None:
    assert readable_number(value) == text


def test_form_class_is_built_once_per_profile(app) -> None:
    profile = app.extensions["credit_service"].model().scorer.profile
    assert form_class(profile) is form_class(profile)


def _profile(name: str):
    return build_profile(name, load_params()["profiles"][name])


def test_open_category_sets_get_a_datalist_and_the_api_rules(app) -> None:
    """risk_flag's city is an open set: free text with the seen values offered, cleaned like the API does."""
    profile = _profile("risk_flag")
    summary = {"city": {"default": "Mysore", "seen": ["Kota", "Mysore"]},
               "house_ownership": {"default": "rented"}, "experience": {"default": 6.0, "p01": 1.0, "p99": 19.0}}
    model = SimpleNamespace(name="credit-default-risk_flag", version="7", meta={"feature_summary": summary})
    with app.test_request_context("/"):
        cls = form_class(profile)
        form = cls(formdata=None, data=default_values(profile, summary))
        html = render_template("form.html", form=form, model=model, profile=profile,
                               infos=field_infos(profile, summary), errors=[])
        page = Page(html)
        assert page.by_id["city"]["tag"] == "input" and page.by_id["city"]["list"] == "city-options"
        assert page.by_id["city"]["value"] == "Mysore"
        assert page.by_id["city-options"]["tag"] == "datalist" and '<option value="Kota">' in html
        assert '<option selected value="rented">rented</option>' in html
        assert "neither rents nor owns" in html
        assert "Most applicants: 1 to 19." in page.text_of("experience-hint")
        posted = MultiDict({**{n: "" for n in profile.features}, "income": "500000", "experience": "5",
                            "house_ownership": "rented", "car_ownership": "no",
                            "profession": "Civil_engineer", "city": "Mysore[7][8]", "state": "Karnataka",
                            "current_job_yrs": "3", "current_house_yrs": "11"})
        form = cls(formdata=posted, meta={"csrf": False})
        assert form.validate(), form.errors
        row = form.row()
        assert row["city"] == "Mysore" and row["profession"] == "Civil engineer" and row["experience"] == 5.0


def test_nullable_fields_are_optional(app) -> None:
    profile = _profile("credit_risk")
    with app.test_request_context("/"):
        cls = form_class(profile)
        data = {"person_income": "50000", "person_home_ownership": "RENT",
                "person_emp_length": "", "loan_intent": "EDUCATION", "loan_grade": "B", "loan_amnt": "5000",
                "loan_int_rate": "", "loan_percent_income": "0.1", "cb_person_default_on_file": "N",
                "cb_person_cred_hist_length": "4"}
        form = cls(formdata=MultiDict(data), meta={"csrf": False})
        assert form.validate(), form.errors
        assert form.row()["person_emp_length"] is None and form.row()["loan_int_rate"] is None
        assert not form.person_emp_length.flags.required and form.person_income.flags.required
        infos = {i.name: i for i in field_infos(profile, {})}
        assert infos["person_emp_length"].optional and "Optional" in infos["person_emp_length"].hint


@pytest.mark.parametrize("changes", [{}, {"pay_0": 8, "pay_2": 7}], ids=["typical", "late payer"])
def test_the_result_page_lists_the_principal_reasons_of_a_decline_or_referral(client, app, changes) -> None:
    data = form_data(client, app, **changes)
    html = client.post("/", data=data).get_data(as_text=True)
    page = Page(html)
    model = app.extensions["credit_service"].model()
    row = {**default_applicant(model.meta), **{k: float(v) for k, v in changes.items()}}
    expected = model.scorer.score([row])[0]
    shown = re.findall(r'<li class="adverse-reason"><span class="reason-code">(\w+)</span> ([^<:]+):', html)
    assert shown == [(r["code"], r["reason"]) for r in expected["adverse_action"]]
    if expected["decision"] == "approve":
        assert 'id="adverse-action"' not in html
    else:
        assert shown and "Principal reasons" in page.text_of("adverse-title")
    if changes:
        assert expected["decision"] == "decline" and shown[0][0] in {"TC03", "TC04"}  # the late payments first
