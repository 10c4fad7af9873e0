"""Notifications: one webhook POST when something needs a person.

Drift flagged, decay found, a quality gate blocking a challenger, a batch rejecting too many
rows, a flow failing: each is an :class:`Event` that names what happened and where to look
(files, reports, the log). ``notify.format: json`` posts the event itself (any receiver: a
chat bridge, an incident tool, a script); ``slack`` posts a Slack-compatible ``text`` and
``blocks`` body. The URL is a secret and comes from ``$NOTIFY_WEBHOOK_URL`` only; unset,
nothing is sent (logged at info). Network errors and 5xx answers are retried with backoff;
a notification that still cannot be delivered is logged as an error and never fails the
work that raised it (the event is also in that work's own log and output).
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from src.config import NotifySettings, env

log = logging.getLogger(__name__)

PROJECT = "credit-default"
BACKOFF_SECONDS = 0.5  # before the 2nd attempt; doubled before each next one
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class Event:
    """What happened (``kind``: drift_flagged, performance_decay, gate_blocked, batch_rejects, flow_failed),
    how bad, in a title and a few sentences, and where to look."""

    kind: str
    severity: str
    title: str
    text: str
    where: list[str] = field(default_factory=list)  # files, reports, URLs: where a person starts looking
    details: dict[str, Any] = field(default_factory=dict)  # the figures behind it (JSON-serialisable)
    dataset: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {self.severity!r}")


def payload(event: Event, fmt: str, now: datetime | None = None) -> dict[str, Any]:
    """The body to POST: the event as JSON, or a Slack-compatible message."""
    created = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    if fmt == "slack":
        where = "\n".join(f"• `{w}`" for w in event.where)
        heading = f"[{event.severity.upper()}] {event.title}"
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": heading[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": event.text}}]
        if where:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Where to look*\n{where}"}})
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
            f"{PROJECT} · {event.dataset or '-'} · {event.kind} · {socket.gethostname()} · {created}")}]})
        return {"text": f"{heading}: {event.text}" + (f" Where to look: {', '.join(event.where)}" if where else ""),
                "blocks": blocks}
    return {"project": PROJECT, "event": event.kind, "severity": event.severity, "title": event.title,
            "text": event.text, "where": list(event.where), "details": event.details, "dataset": event.dataset,
            "host": socket.gethostname(), "created_at": created}


def safe_target(url: str) -> str:
    """scheme://host[:port] only: a webhook's path and query often hold its secret token."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."


def redact(text: str, url: str) -> str:
    """``text`` without the webhook's path and query (requests puts the URL in its error messages)."""
    parts = urllib.parse.urlsplit(url)
    secret = url.split(parts.netloc, 1)[1] if parts.netloc else url
    return text.replace(url, safe_target(url)).replace(secret, "/...") if secret.strip("/") else text


def send(event: Event, settings: NotifySettings, url: str | None = None) -> bool:
    """POST ``event`` to the webhook; True when a 2xx answer came back. Never raises for delivery problems."""
    url = url if url is not None else env.text(env.NOTIFY_WEBHOOK_URL)
    if not url:
        log.info("notification not sent (no $%s): %s", env.NOTIFY_WEBHOOK_URL, event.title)
        return False
    body = payload(event, settings.format)
    problem = ""
    for attempt in range(1, settings.attempts + 1):
        try:
            resp = requests.post(url, json=body, timeout=settings.timeout_seconds)
        except requests.RequestException as exc:
            problem = f"{type(exc).__name__}: {redact(str(exc).splitlines()[0] if str(exc) else '', url)}"
        else:
            if 200 <= resp.status_code < 300:
                log.info("notified %s: %s", safe_target(url), event.title)
                return True
            problem = f"HTTP {resp.status_code}"
            if resp.status_code < 500 and resp.status_code != 429:  # the receiver refuses this body: no retry
                break
        if attempt < settings.attempts:
            time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    log.error("could not deliver the notification '%s' to %s (%s, after %d attempt(s)); it stays in this log",
              event.title, safe_target(url), problem, attempt)
    return False
