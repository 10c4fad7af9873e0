"""The JSON API and ops routes through Flask's test client, on a real (small) registered model."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from flask_api import create_app
from flask_api.validation import applicant_json_schema, validate_applicants
from src.config.profile import PROTECTED_MESSAGE
from tests.conftest import TrainedProject, default_applicant, plain_rows

PREDICT = "/api/v1/predict"


def meta_of(app) -> dict[str, Any]:
    return app.extensions["credit_service"].model().meta


def applicant(app, **changes: Any) -> dict[str, Any]:
    return {**default_applicant(meta_of(app)), **changes}


def test_health_ready_schema_openapi(client, app) -> None:
    assert client.get("/health").json == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json["model"]["version"] == "1"
    schema = client.get("/api/v1/schema").json
    assert set(schema["properties"]) == set(meta_of(app)["features"])
    assert schema["properties"]["education"]["enum"] == [0, 1, 2, 3, 4, 5, 6]
    doc = client.get("/api/v1/openapi.json").json
    assert doc["openapi"].startswith("3.1")
    body = doc["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["applicants"]["maxItems"] == app.extensions["credit_service"].settings.serve.max_batch
    assert {"200", "400", "413", "415", "422", "503"} <= set(doc["paths"]["/api/v1/predict"]["post"]["responses"])


def test_prediction_matches_the_pipeline_and_bands(client, app) -> None:
    svc = app.extensions["credit_service"]
    model = svc.model()
    test = pd.read_parquet(svc.settings.split_table("test"))
    features = model.meta["features"]
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
            for r in test[features].head(50).to_dict("records")]
    resp = client.post(PREDICT, json={"applicants": rows, "reasons": False})
    assert resp.status_code == 200, resp.json
    got = np.array([r["probability_of_default"] for r in resp.json["results"]])
    expected = model.scorer.pipeline.predict_proba(test[features].head(50))[:, 1]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    t, margin = model.scorer.threshold, model.scorer.refer_margin
    for result in resp.json["results"]:
        p = result["probability_of_default"]
        band = "decline" if p >= t else ("refer" if p >= t - margin else "approve")
        assert result["decision"] == band
        assert "reasons" not in result
    assert resp.json["model"] == {"name": "credit-default-taiwan_credit", "version": "1"}
    assert len(resp.json["request_id"]) == 36


def test_reasons_are_lightgbm_contributions_in_order(client, app) -> None:
    model = app.extensions["credit_service"].model()
    row = applicant(app, pay_0=2, limit_bal=20000.0)
    result = client.post(PREDICT, json={"applicants": [row]}).json["results"][0]
    reasons = result["reasons"]
    assert len(reasons) == app.extensions["credit_service"].settings.serve.top_reasons
    # Independent computation: the Pipeline's own encoder, then LightGBM's TreeSHAP.
    frame = pd.DataFrame([row])[model.meta["features"]]
    encoded = model.scorer.pipeline.named_steps["preprocess"].transform(frame)
    booster = model.scorer.pipeline.named_steps["model"].booster_
    contrib = booster.predict(encoded, pred_contrib=True, num_iteration=model.scorer.num_iteration)[0]
    by_name = dict(zip(encoded.columns, contrib[:-1], strict=True))
    top = sorted(by_name, key=lambda c: -abs(by_name[c]))[: len(reasons)]
    assert [r["feature"] for r in reasons] == top
    for r in reasons:
        assert r["contribution"] == pytest.approx(by_name[r["feature"]], abs=1e-6)
        assert r["direction"] == ("raises" if by_name[r["feature"]] > 0 else "lowers")
        assert r["label"] in r["text"] and r["direction"] in r["text"]
    # TreeSHAP is additive: all contributions plus the bias give the model's log-odds.
    p = result["probability_of_default"]
    assert sum(contrib) == pytest.approx(math.log(p / (1 - p)), abs=1e-6)
    by_feature = {r["feature"]: r for r in reasons}
    if "pay_0" in by_feature:
        assert by_feature["pay_0"]["direction"] == "raises"  # two months late raises the risk


@pytest.mark.parametrize(("kwargs", "status", "needle"), [
    ({"data": "not json", "content_type": "text/plain"}, 415, "application/json"),
    ({"data": "{broken", "content_type": "application/json"}, 400, "not valid JSON"),
    ({"json": []}, 422, "JSON object"),
    ({"json": "text"}, 422, "JSON object"),
    ({"json": 7}, 422, "JSON object"),
    ({"data": "null", "content_type": "application/json"}, 422, "JSON object"),
    ({"data": "", "content_type": "application/json"}, 400, "not valid JSON"),
    ({}, 415, "application/json"),
    ({"json": {}}, 422, "non-empty list"),
    ({"json": {"applicants": []}}, 422, "non-empty list"),
    ({"json": {"applicants": "x"}}, 422, "non-empty list"),
    ({"json": {"applicants": [None]}}, 422, "invalid field"),
    ({"json": {"applicants": [[]]}}, 422, "invalid field"),
    ({"json": {"applicants": [{}], "extra": 1}}, 422, "unknown top-level"),
    ({"json": {"applicants": [{}], "reasons": "yes"}}, 422, "'reasons' must be true or false"),
])
def test_client_errors_are_4xx_json(client, kwargs: dict, status: int, needle: str) -> None:
    resp = client.post(PREDICT, **kwargs)
    assert resp.status_code == status, resp.data
    assert needle in resp.json["error"]
    assert "Traceback" not in resp.get_data(as_text=True)


def test_every_bad_field_is_named_with_its_row(client, app) -> None:
    good = applicant(app)
    bad = applicant(app, pay_0=12, pay_amt1=-5, education="university", limit_bal="lots", sex=1)
    del bad["pay_2"]
    bad["favourite_colour"] = "blue"
    resp = client.post(PREDICT, json={"applicants": [good, bad]})
    assert resp.status_code == 422
    errors = {(e["row"], e["field"]): e["message"] for e in resp.json["errors"]}
    assert errors == {
        (1, "pay_0"): "must be at most 9 months late",
        (1, "pay_amt1"): "must be at least 0 NT$",
        (1, "education"): errors[(1, "education")],
        (1, "limit_bal"): "must be a number",
        (1, "pay_2"): "is required",
        (1, "favourite_colour"): "is not a known field",
        (1, "sex"): PROTECTED_MESSAGE,
    }
    assert errors[(1, "education")].startswith("must be one of 0 (unknown (code 0)), 1 (graduate school)")
    assert app.extensions["credit_service"].predlog.count() == 0  # nothing scored, nothing logged


@pytest.mark.parametrize("field", ["sex", "marriage", "age"])
def test_a_protected_attribute_is_refused_by_name(client, app, field: str) -> None:
    """An otherwise valid applicant that sends a prohibited basis gets a 422 saying why, and nothing is scored."""
    resp = client.post(PREDICT, json={"applicants": [{**applicant(app), field: 1}]})
    assert resp.status_code == 422
    assert resp.json["errors"] == [{"row": 0, "field": field, "message": PROTECTED_MESSAGE}]
    assert "protected attribute" in PROTECTED_MESSAGE
    schema = client.get("/api/v1/schema").json
    assert field not in schema["properties"] and field not in schema["required"]
    assert app.extensions["credit_service"].predlog.count() == 0


def test_too_many_rows_and_too_large_a_body(client, app) -> None:
    limit = app.extensions["credit_service"].settings.serve.max_batch
    resp = client.post(PREDICT, json={"applicants": [applicant(app)] * (limit + 1)})
    assert resp.status_code == 422 and f"serve.max_batch = {limit}" in resp.json["error"]
    huge = json.dumps({"applicants": [applicant(app)], "pad": "x" * app.config["MAX_CONTENT_LENGTH"]})
    resp = client.post(PREDICT, data=huge, content_type="application/json")
    assert resp.status_code == 413 and "larger than" in resp.json["error"]


def test_unknown_route_and_method_are_json_4xx(client) -> None:
    assert client.get("/api/v1/nope").status_code == 404
    resp = client.get(PREDICT)
    assert resp.status_code == 405 and "error" in resp.json
    assert "POST" in resp.headers["Allow"]  # RFC 9110: a 405 lists the allowed methods


def test_every_scored_row_is_logged_and_counted(client, app) -> None:
    rows = [applicant(app), applicant(app, limit_bal=60000.0), applicant(app, pay_0=3)]
    resp = client.post(PREDICT, json={"applicants": rows, "reasons": False})
    assert resp.status_code == 200
    svc = app.extensions["credit_service"]
    assert svc.predlog.count() == 3
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'rows_scored_total{source="api"} 3.0' in metrics
    assert "predicted_probability_of_default_count 3.0" in metrics
    assert 'http_requests_total{endpoint="/api/v1/predict",method="POST",status="200"} 1.0' in metrics
    assert 'model_info{name="credit-default-taiwan_credit",version="1"} 1.0' in metrics


def test_a_database_outage_never_fails_the_prediction_and_loses_no_row(client, app,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows wait in the spool while the database refuses them, /metrics shows the backlog, then they arrive."""
    svc = app.extensions["credit_service"]
    shipper = svc.predlog.shipper
    real_insert = shipper._insert

    def down(*_args: Any, **_kwargs: Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("could not connect to server"))

    before = svc.predlog.count()
    monkeypatch.setattr(shipper, "_insert", down)
    resp = client.post(PREDICT, json={"applicants": [applicant(app), applicant(app)]})
    assert resp.status_code == 200 and len(resp.json["results"]) == 2
    assert not svc.predlog.flush(timeout=0.5)  # not in the database yet: the shipper keeps failing
    text = client.get("/metrics").get_data(as_text=True)
    assert metric_value(text, "prediction_log_backlog_bytes") > 0
    assert metric_value(text, "prediction_log_ship_errors_total") >= 1
    assert metric_value(text, "prediction_log_failures_total") == 0
    monkeypatch.setattr(shipper, "_insert", real_insert)  # the database is back
    assert svc.predlog.flush(timeout=20)
    assert svc.predlog.count() == before + 2
    assert metric_value(client.get("/metrics").get_data(as_text=True), "prediction_log_backlog_bytes") == 0


def test_a_decision_that_cannot_be_recorded_is_not_given(client, app) -> None:
    """The spool cannot be written (here: closed; in life a full disk): 503 naming why, counted, no decision."""
    svc = app.extensions["credit_service"]
    svc.predlog.close()
    resp = client.post(PREDICT, json={"applicants": [applicant(app)] * 3})
    assert resp.status_code == 503 and "could not be recorded" in resp.json["error"]
    assert "results" not in resp.json and "request_id" not in resp.json
    text = client.get("/metrics").get_data(as_text=True)
    assert metric_value(text, "prediction_log_failures_total") == 3
    assert 'rows_scored_total{source="api"}' not in text  # nothing counted as scored


def metric_value(text: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the exposition")


def test_not_ready_until_a_model_is_loaded(trained_project: TrainedProject, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
    app = create_app({"SETTINGS": trained_project.settings, "MODEL_URI": str(tmp_path / "missing"),
                      "MODEL_LOADING": "sync"})
    client = app.test_client()
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json["status"] == "error" and ready.json["error"]
    resp = client.post(PREDICT, json={"applicants": [{"limit_bal": 30}]})
    assert resp.status_code == 503 and "no model loaded" in resp.json["error"]


def test_admin_reload_swaps_in_a_freshly_loaded_model(client, app) -> None:
    """(Open here: no credentials on a loopback address. Keys and scopes: tests/unit/test_access.py.)"""
    before = app.extensions["credit_service"].model()
    resp = client.post("/admin/reload")
    assert resp.status_code == 200 and resp.json["model"]["version"] == "1"
    assert app.extensions["credit_service"].model() is not before  # swapped for a freshly loaded one
    assert 'model_reloads_total{outcome="ok"}' in client.get("/metrics").get_data(as_text=True)


FIELD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**7, 10**7),
                         st.floats(allow_nan=False, allow_infinity=False, width=32),
                         st.text(max_size=6), st.sampled_from(["1", "2", "abc", ""]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_validator_agrees_with_the_published_json_schema(trained_project: TrainedProject, data: st.DataObject) -> None:
    """The hand-written validator and /api/v1/schema accept exactly the same applicants."""
    profile = trained_project.settings.profile
    schema = applicant_json_schema(profile)
    base = {name: entry["default"] for name, entry in
            json.loads(trained_project.settings.model_meta_file.read_text())["feature_summary"].items()}
    names = data.draw(st.lists(st.sampled_from([*profile.feature_names, "unknown_field"]), max_size=4, unique=True))
    row = dict(base)
    for name in names:
        if data.draw(st.booleans()):
            row.pop(name, None)
        else:
            row[name] = data.draw(FIELD_VALUES)
    _, errors = validate_applicants([row], profile)
    schema_ok = jsonschema.Draft202012Validator(schema).is_valid(row)
    assert (not errors) == schema_ok, (row, [e.as_dict() for e in errors])


def test_reload_on_one_worker_reaches_the_others(trained_project: TrainedProject, tmp_path, monkeypatch) -> None:
    """Two apps sharing RELOAD_MARKER_FILE stand in for two gunicorn workers."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'p.db'}")
    monkeypatch.setenv("RELOAD_MARKER_FILE", str(tmp_path / "shared" / "reload-generation"))
    overrides = {"SETTINGS": trained_project.settings, "MODEL_URI": str(trained_project.model_dir),
                 "MODEL_LOADING": "sync"}
    first, second = create_app(dict(overrides)), create_app(dict(overrides))
    before = second.extensions["credit_service"].model()
    resp = first.test_client().post("/admin/reload")
    assert resp.status_code == 200
    assert second.test_client().get("/health").status_code == 200  # this request notices the marker
    deadline = time.monotonic() + 60
    while second.extensions["credit_service"].model() is before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert second.extensions["credit_service"].model() is not before
    assert 'model_reloads_total{outcome="ok"} 2.0' in second.test_client().get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_numbers_are_malformed_json(client, app, literal: str) -> None:
    """NaN and Infinity are not JSON (the standard library would accept them): 400."""
    row = applicant(app)
    name = next(iter(row))
    body = json.dumps({"applicants": [{**row, name: 0}]}).replace(f'"{name}": 0', f'"{name}": {literal}')
    assert literal in body
    resp = client.post(PREDICT, data=body, content_type="application/json")
    assert resp.status_code == 400 and resp.json == {"error": "the request body is not valid JSON"}


def test_responses_are_compact_json_in_request_order(client, app) -> None:
    resp = client.post(PREDICT, json={"applicants": [applicant(app)], "reasons": False})
    assert resp.mimetype == "application/json"
    assert list(resp.json) == ["request_id", "model", "threshold", "results"]
    assert list(resp.json["results"][0]) == ["probability_of_default", "decision", "adverse_action"]


def test_api_requests_without_a_cookie_build_no_session_signer(client, app, monkeypatch: pytest.MonkeyPatch) -> None:
    """No session cookie: an empty session without itsdangerous set-up, and no cookie in the answer.

    The web form still gets its signed session (CSRF): tests/unit/test_views.py posts forms with it.
    """
    interface = app.session_interface

    def refuse(*args: Any) -> None:
        raise AssertionError("a session serializer was built for a cookie-less request")

    monkeypatch.setattr(interface, "get_signing_serializer", refuse)
    # Not a prediction: plain predictions never reach Flask's session code (flask_api/fastpath.py).
    resp = client.get("/api/v1/schema")
    assert resp.status_code == 200 and "Set-Cookie" not in resp.headers
    monkeypatch.undo()
    form = client.get("/")
    assert form.status_code == 200 and "session=" in form.headers.get("Set-Cookie", "")
    calls = []
    real = interface.get_signing_serializer
    monkeypatch.setattr(interface, "get_signing_serializer", lambda a: calls.append(1) or real(a))
    assert client.get("/").status_code == 200  # the cookie is sent back now: read and verified as before
    assert calls


def test_repayment_status_codes_read_as_words(client, app) -> None:
    """pay_* below 1 are codes, not amounts: "-1 months late" would be wrong, "paid in full" is right."""
    scorer = app.extensions["credit_service"].model().scorer
    contrib = np.zeros(len(scorer.columns) + 1)
    contrib[scorer.columns.index("pay_0")] = -0.5
    (code,) = scorer.reasons(applicant(app, pay_0=-1), contrib, top=1)
    assert code.value == "paid in full"
    assert code.text == "Repayment status, September = paid in full lowers the risk of default"
    (late,) = scorer.reasons(applicant(app, pay_0=2.0), contrib, top=1)
    assert late.value == "2 months late"
    schema = client.get("/api/v1/schema").json["properties"]["pay_0"]
    assert schema["description"] == ("unit: months late; codes: -2 = no balance (card not used); -1 = paid in full; "
                                     "0 = revolving credit (minimum paid)")
    assert "Codes: -2 = no balance (card not used); -1 = paid in full" in client.get("/").get_data(as_text=True)


def test_model_information_carries_the_fairness_verdict(client, trained_project) -> None:
    """The fairness floors' verdict is stored with the model, so the service shows it (warnings included)."""
    verdict = json.loads(trained_project.settings.fairness_file.read_text())["gate"]
    shown = client.get("/ready").json["model"]["fairness"]
    assert shown == {"verdict": verdict["verdict"], "warnings": verdict["warnings"], "blocking": verdict["blocking"]}
    assert shown["verdict"] in {"passed", "warned"}  # the served champion passed the gate
    tags = MlflowClient(trained_project.tracking_uri).get_model_version(trained_project.model_name, "1").tags
    assert tags["gate.fairness"] == verdict["verdict"] and tags["gate.warnings"] == "; ".join(verdict["warnings"])


def test_declines_and_referrals_always_carry_their_principal_reasons(client, app, trained_project) -> None:
    """Reasons or not, a decline or referral gets up to serve.top_reasons adverse-action reasons: codes and
    statements of the inputs that raised the risk most, in order, with the applicant's value; an approval none."""
    test = pd.read_parquet(trained_project.settings.split_table("test")).head(200)
    scorer = app.extensions["credit_service"].model().scorer
    rows = plain_rows(test, scorer.profile)
    codes = {spec.reason_code: (name, spec.reason) for name, spec in scorer.profile.features.items()}
    for reasons in (False, True):
        results = client.post(PREDICT, json={"applicants": rows, "reasons": reasons}).json["results"]
        contrib = scorer.contributions(scorer.encode(rows))
        seen = {"approve": 0, "refer": 0, "decline": 0}
        for i, result in enumerate(results):
            seen[result["decision"]] += 1
            given = result["adverse_action"]
            if result["decision"] == "approve":
                assert given == []
                continue
            assert 1 <= len(given) <= trained_project.settings.serve.top_reasons
            raised = [contrib[i][scorer.columns.index(codes[r["code"]][0])] for r in given]
            assert all(c > 0 for c in raised) and raised == sorted(raised, reverse=True)
            for r in given:
                assert (r["feature"], r["reason"]) == codes[r["code"]] and r["value"]
                assert r["feature"] not in {"sex", "marriage", "age"}
            # nothing that raised the risk more was left out
            left_out = [contrib[i][j] for j, c in enumerate(scorer.columns) if c not in {r["feature"] for r in given}]
            assert len(given) == trained_project.settings.serve.top_reasons or max(left_out, default=0) <= 0
            assert min(raised) >= max(left_out, default=-1)
        assert seen["decline"] and seen["approve"], seen


def test_a_logged_decision_can_be_looked_up_by_an_admin(client, app, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /api/v1/decisions/<id>: 404 for an unknown id, and the decision as recorded (inputs, model,
    probability, decision, the reason codes given). (Open here; the admin scope: tests/unit/test_access.py.)"""
    rows = [applicant(app), applicant(app, pay_0=8, pay_2=7)]
    answer = client.post(PREDICT, json={"applicants": rows, "reasons": False}).json
    url = f"/api/v1/decisions/{answer['request_id']}"
    auth: dict[str, str] = {}
    svc = app.extensions["credit_service"]
    assert svc.predlog.flush(10)
    record = client.get(url, headers=auth).json
    assert record["request_id"] == answer["request_id"] and record["source"] == "api"
    assert record["requested_by"] is None  # open: nobody to name
    assert record["created_at"].endswith("+00:00")  # UTC, said so (SQLite keeps no zone)
    assert record["model"] == answer["model"]
    cleaned, _ = validate_applicants(rows, svc.model().scorer.profile)
    assert [r["features"] for r in record["results"]] == cleaned  # the inputs as validated and scored
    for logged, answered in zip(record["results"], answer["results"], strict=True):
        assert logged["probability_of_default"] == answered["probability_of_default"]
        assert logged["decision"] == answered["decision"]
        assert logged["adverse_action"] == [a["code"] for a in answered["adverse_action"]]
    assert answer["results"][1]["decision"] != "approve" and record["results"][1]["adverse_action"]
    unknown = client.get("/api/v1/decisions/01234567-89ab-7cde-8f01-23456789abcd", headers=auth)
    assert unknown.status_code == 404 and "no decision" in unknown.json["error"]
    assert client.get("/api/v1/decisions/not-an-id", headers=auth).status_code == 404


def test_a_worker_with_no_traffic_still_takes_up_an_announced_reload(trained_project, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two apps sharing a reload marker stand in for two gunicorn workers: one reloads and announces it; the
    other, which gets no request at all, swaps in a freshly loaded model from its own watcher thread."""
    monkeypatch.setenv("RELOAD_MARKER_FILE", str(tmp_path / "reload.marker"))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    apps = []
    for name in ("a", "b"):
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / f'{name}.db'}")
        apps.append(create_app({"SETTINGS": trained_project.settings, "MODEL_URI": str(trained_project.model_dir),
                                "MODEL_LOADING": "sync", "TESTING": True}))
    announcer, idle = (app.extensions["credit_service"] for app in apps)
    try:
        before = idle.models.current
        announcer.reload()
        announcer.announce_reload()
        deadline = time.monotonic() + 30
        while idle.models.current is before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert idle.models.current is not before, "the idle worker never took up the announced reload"
        assert idle.models.current.version == before.version
    finally:
        for svc in (announcer, idle):
            svc.predlog.dispose()
