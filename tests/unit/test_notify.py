"""Notifications (src/notify.py) delivered to a real local HTTP receiver: the body names what happened and where
to look; failures are retried, refusals are not, and nothing a webhook does fails the work that raised it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from src import notify
from src.config import NotifySettings
from tests.net import free_port
from tests.webhook import Receiver

EVENT = notify.Event("drift_flagged", "warning", "Drift flagged on taiwan_credit: education",
                     "4,521 rows of batch.parquet against the 20,968 training rows: drifted education (chi-square).",
                     where=["metrics/drift.json", "reports/drift_report.html"],
                     details={"drifted_features": ["education"]}, dataset="taiwan_credit")
FAST = NotifySettings(attempts=3, timeout_seconds=2)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "BACKOFF_SECONDS", 0.01)


def test_the_json_body_names_the_event_and_where_to_look(webhook: Receiver) -> None:
    assert notify.send(EVENT, FAST) is True
    [received] = webhook.received
    assert received.path == "/hooks/T0KEN-SECRET"
    assert received.headers["Content-Type"] == "application/json"
    body = received.body
    assert {k: body[k] for k in ("project", "event", "severity", "title", "where", "dataset")} == {
        "project": "credit-default", "event": "drift_flagged", "severity": "warning",
        "title": "Drift flagged on taiwan_credit: education",
        "where": ["metrics/drift.json", "reports/drift_report.html"], "dataset": "taiwan_credit"}
    assert body["details"] == {"drifted_features": ["education"]} and "education (chi-square)" in body["text"]
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None and body["host"]


def test_the_slack_body_is_a_slack_message(webhook: Receiver) -> None:
    assert notify.send(EVENT, NotifySettings(format="slack")) is True
    body = webhook.received[0].body
    assert set(body) == {"text", "blocks"}
    assert body["text"].startswith("[WARNING] Drift flagged on taiwan_credit: education: 4,521 rows")
    assert "metrics/drift.json" in body["text"]
    kinds = [block["type"] for block in body["blocks"]]
    assert kinds == ["header", "section", "section", "context"]
    assert "`reports/drift_report.html`" in body["blocks"][2]["text"]["text"]
    assert "drift_flagged" in body["blocks"][3]["elements"][0]["text"]


def test_a_failing_receiver_is_retried_until_it_answers(webhook: Receiver) -> None:
    webhook.statuses = [500, 503]
    assert notify.send(EVENT, FAST) is True
    assert len(webhook.received) == 3 and all(r.body == webhook.received[0].body for r in webhook.received)


def test_a_refusal_is_not_retried_and_the_log_keeps_the_secret_out(webhook: Receiver,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    webhook.statuses = [400]
    with caplog.at_level(logging.ERROR, logger="src.notify"):
        assert notify.send(EVENT, FAST) is False
    assert len(webhook.received) == 1
    assert "could not deliver the notification 'Drift flagged on taiwan_credit: education'" in caplog.text
    assert "HTTP 400" in caplog.text and "T0KEN" not in caplog.text


def test_an_unreachable_webhook_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?token=T0KEN"
    with caplog.at_level(logging.ERROR, logger="src.notify"):
        assert notify.send(EVENT, NotifySettings(attempts=2, timeout_seconds=1), url=url) is False
    assert "after 2 attempt(s)" in caplog.text and "ConnectionError" in caplog.text and "T0KEN" not in caplog.text


def test_without_a_webhook_nothing_is_sent(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("NOTIFY_WEBHOOK_URL", raising=False)
    with caplog.at_level(logging.INFO, logger="src.notify"):
        assert notify.send(EVENT, FAST) is False
    assert "no $NOTIFY_WEBHOOK_URL" in caplog.text


def test_an_event_needs_a_known_severity() -> None:
    with pytest.raises(ValueError, match="severity"):
        notify.Event("x", "urgent", "t", "text")
    assert notify.payload(EVENT, "json", datetime(2026, 12, 5, tzinfo=UTC))["created_at"] == "2026-12-05T00:00:00+00:00"
