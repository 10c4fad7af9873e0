"""Who may call which route, checked before anything else runs (the fast path and Flask alike).

WSGI middleware in front of the whole app. Route classes: ``/health`` and ``/ready``
are open (load balancers probe them); ``/api/*`` needs an API key with the
``score`` scope; ``/metrics`` the ``metrics`` scope; the decision lookup ``review``;
``/admin/*`` ``admin`` (which may do everything). A key comes as ``Authorization: Bearer <key>`` or ``X-API-Key``.
A missing or wrong key is 401 and a key without the scope 403, neither saying
which keys exist; too many requests for a key, or too many failed attempts from
one address (checked before the key, so guessing is slowed), are 429 with
``Retry-After``. The web pages are left to the sign-in (flask_api/signin.py).

With ``serve.metrics_bind`` set, ``/metrics`` is served on that address only, with
no key (who can reach it is the network's business), and 404 on the service port.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask_api.fastpath import status_line
from flask_api.jsonio import dumps_bytes
from flask_api.service import Service
from src.auth.policy import KEY_ENVIRON, CredentialSource
from src.auth.store import ApiKey, Credentials, allows
from src.auth.throttle import Throttle
from src.config import AuthSettings

StartResponse = Callable[..., Any]
OPEN_PATHS = frozenset({"/health", "/ready"})
DECISIONS = "/api/v1/decisions/"
REALM = 'Bearer realm="credit-default"'


def route_class(path: str) -> tuple[str | None, str]:
    """(the scope a path needs, or None for open and web routes; its metrics label)."""
    if path in OPEN_PATHS or not path.startswith(("/api/", "/admin/", "/metrics")):
        return None, path
    if path == "/metrics":
        return "metrics", path
    if path.startswith(DECISIONS):
        return "review", DECISIONS + "<request_id>"
    if path.startswith("/admin/"):
        return "admin", path if path == "/admin/reload" else "unmatched"
    return "score", path if path in ("/api/v1/predict", "/api/v1/schema", "/api/v1/openapi.json") else "unmatched"


def presented_key(environ: dict[str, Any]) -> str | None:
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return environ.get("HTTP_X_API_KEY", "").strip() or None


def metrics_port(bind: str | None) -> str | None:
    """The port of a ``host:port`` metrics address (how a request on it is told apart: SERVER_PORT)."""
    return bind.rsplit(":", 1)[1] if bind and ":" in bind else None


class AccessGate:
    """WSGI middleware: answers 401/403/404/429 itself; lets the rest through with the key's id noted."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]], svc: Service,
                 source: CredentialSource, settings: AuthSettings, throttle: Throttle,
                 metrics_bind: str | None) -> None:
        self.app = app
        self.svc = svc
        self.source = source
        self.settings = settings
        self.throttle = throttle
        self.metrics_port = metrics_port(metrics_bind)
        self.metrics_bind = metrics_bind
        # A key seen before skips its hash: plain key -> (the credentials it was checked against, its record).
        # Only keys that passed are kept, and only while the credentials are the same object (no reload since).
        self._verified: dict[str, tuple[Credentials, ApiKey]] = {}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if self.metrics_port is not None:
            on_metrics_port = environ.get("SERVER_PORT") == self.metrics_port
            if on_metrics_port:  # the metrics address serves /metrics and /health, unauthenticated
                if path in ("/metrics", "/health"):
                    return self.app(environ, start_response)
                return self.refuse(environ, start_response, 404, path, "only /metrics and /health are served "
                                                                       "on this address")
            if path == "/metrics":
                return self.refuse(environ, start_response, 404, path,
                                   f"/metrics is served on {self.metrics_bind}, not on this address")
        scope, label = route_class(path)
        if scope is None:
            return self.app(environ, start_response)
        creds = self.source.current()
        if not self.source.required:  # open (a loopback address with no credentials; said at start-up)
            return self.app(environ, start_response)
        address = environ.get("REMOTE_ADDR", "")
        wait = self.throttle.failures_block(self.settings.failed_limit, address)
        if wait is not None:
            return self.refuse(environ, start_response, 429, label, f"too many failed attempts from {address}; "
                               f"retry after {wait} s", wait)
        raw = presented_key(environ)
        key = self._verify(creds, raw) if raw else None
        if key is None:
            self.throttle.note_failure(self.settings.failed_limit, address)
            return self.refuse(environ, start_response, 401, label, "missing or invalid API key (send "
                               "'Authorization: Bearer <key>' or 'X-API-Key: <key>')")
        if not allows(key.scope, scope):
            return self.refuse(environ, start_response, 403, label,
                               f"this key's scope ({key.scope}) does not allow this route (it needs {scope})")
        wait = self.throttle.admit(key.rate_limit or self.settings.rate_limit, key.id)
        if wait is not None:
            return self.refuse(environ, start_response, 429, label,
                               f"rate limit of this key reached; retry after {wait} s", wait)
        environ[KEY_ENVIRON] = key.id
        return self.app(environ, start_response)

    def _verify(self, creds: Credentials, raw: str) -> ApiKey | None:
        seen = self._verified.get(raw)
        if seen is not None and seen[0] is creds:
            return seen[1]
        key = creds.verify_key(raw)
        if key is not None:
            if len(self._verified) >= 10_000:
                self._verified.clear()
            self._verified[raw] = (creds, key)
        return key

    def refuse(self, environ: dict[str, Any], start_response: StartResponse, status: int, label: str,
               message: str, retry_after: int | None = None) -> list[bytes]:
        started = time.perf_counter()
        data = dumps_bytes({"error": message})
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if status == 401:
            headers.append(("WWW-Authenticate", REALM))
        if retry_after is not None:
            headers.append(("Retry-After", str(retry_after)))
        start_response(status_line(status), headers)
        self.svc.metrics.count_request(label, environ.get("REQUEST_METHOD", ""), status,
                                       time.perf_counter() - started)
        return [data]
