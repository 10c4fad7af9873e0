"""The scoring service: ``create_app()`` builds the Flask app; nothing happens at import time.

Configuration comes from params.yaml (``serve:``) with environment overrides:
MODEL_URI, DATABASE_URL, SECRET_KEY, AUTH_FILE, AUTH_ALLOW_OPEN, METRICS_BIND, PARAMS_FILE,
PROMETHEUS_MULTIPROC_DIR. Who may do what: flask_api/access.py (API keys) and
flask_api/signin.py (the web pages), over the credentials of src/auth.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response, g, jsonify, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_api import api, model_page, monitoring_page, ops, review, signin, uploads, views
from flask_api.access import AccessGate
from flask_api.fastpath import FastPredict
from flask_api.jsonio import OrjsonProvider
from flask_api.metrics import Metrics, multiprocess_mode
from flask_api.service import Service, incident
from src.auth.policy import CredentialSource, open_or_refuse
from src.auth.store import CredentialsError
from src.auth.throttle import Throttle
from src.config import ConfigError, Settings, env, load_settings
from src.scoring.model_store import ModelHolder
from src.scoring.predlog import PredictionLog

log = logging.getLogger(__name__)


class CookieOnlySessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, minus the signing set-up on requests that carry no session cookie.

    Flask builds an itsdangerous serializer (key derivation included) on every request
    before it even looks for the cookie; API clients never send one, so that was pure
    overhead on every prediction. With no cookie the session is empty either way.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app. ``overrides`` may hold Flask config and SETTINGS / MODEL_URI / MODEL_LOADING.

    MODEL_LOADING: "background" (default: /ready is 503 until loaded), "sync" or "none".
    """
    overrides = dict(overrides or {})
    settings: Settings = overrides.pop("SETTINGS", None) or load_settings(env.params_file())
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.session_interface = CookieOnlySessionInterface()
    app.config.update(
        SECRET_KEY=env.text(env.SECRET_KEY) or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=settings.serve.max_body_bytes,
        WTF_CSRF_TIME_LIMIT=None,
        MODEL_LOADING="background",
        MODEL_URI=None,
    )
    app.config.update(overrides)

    marker = env.text(env.RELOAD_MARKER_FILE)
    metrics = Metrics()
    # Under gunicorn the master's shipper process ships the spool (env PREDLOG_SHIPPER); else a thread here.
    predlog = PredictionLog(env.database_url(settings), env.spool_dir(settings), ship=not env.ships_elsewhere(),
                            fsync_seconds=settings.serve.log_fsync_seconds,
                            ship_seconds=settings.serve.log_ship_seconds, registry=metrics.registry)
    svc = Service(settings=settings, models=ModelHolder(settings, app.config["MODEL_URI"]),
                  predlog=predlog, metrics=metrics, reload_marker=Path(marker) if marker else None)
    app.extensions["credit_service"] = svc
    auth = settings.serve.auth
    try:
        source = CredentialSource(env.credentials_file(settings))
    except CredentialsError as exc:
        raise ConfigError(str(exc)) from None
    metrics_bind = env.metrics_bind(settings)
    open_or_refuse(source, [env.serve_bind(settings), *([metrics_bind] if metrics_bind else [])],
                   env.allow_open(settings), announced=multiprocess_mode())  # (gunicorn's master said it once)
    app.extensions["credit_credentials"] = source
    if svc.reload_marker is not None or multiprocess_mode():  # several workers (gunicorn.conf.py)
        svc.watch()

    csrf = CSRFProtect(app)
    csrf.exempt(api.bp)
    csrf.exempt(ops.bp)
    csrf.exempt(uploads.bp)  # its form checks its own token, after raising the body limit for the file
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(views.bp)
    app.register_blueprint(review.bp)
    uploads.install(app, settings)
    model_page.install(app, settings)
    app.register_blueprint(monitoring_page.bp)
    try:
        throttle = Throttle(auth.rate_limit_storage)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    signin.install(app, source, auth, throttle)
    _install_hooks(app, svc)
    gate = AccessGate(FastPredict(app, svc), svc, source, auth, throttle, metrics_bind)
    # Behind a load balancer: the client's address (for the failed-attempt limit) and scheme from X-Forwarded-*.
    app.wsgi_app = (ProxyFix(gate, x_for=auth.trusted_proxies, x_proto=auth.trusted_proxies)  # type: ignore
                    if auth.trusted_proxies else gate)
    _start_loading(app, svc)
    return app


def _start_loading(app: Flask, svc: Service) -> None:
    mode = app.config["MODEL_LOADING"]

    def load() -> None:
        try:
            svc.reload()
        except Exception:  # /ready reports svc.models.error
            log.warning("no model loaded from %s; /ready stays 503", svc.models.uri)

    if mode == "sync":
        load()
    elif mode == "background":
        threading.Thread(target=load, name="model-loader", daemon=True).start()


def _is_api(path: str) -> bool:
    return path.startswith(("/api/", "/admin/", "/ready", "/health", "/metrics"))


def _install_hooks(app: Flask, svc: Service) -> None:
    @app.before_request
    def start_timer() -> None:
        g.started = time.perf_counter()
        svc.follow_reloads()

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        started = g.get("started")
        svc.metrics.count_request(endpoint, request.method, response.status_code,
                                  None if started is None else time.perf_counter() - started)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if exc.code == 413:
            message = f"request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes"
        else:
            message = exc.description or exc.name
        response = exc.get_response()  # keeps headers such as Allow on 405 (RFC 9110)
        if _is_api(request.path):
            response.set_data(app.json.dumps({"error": message}))
            response.mimetype = "application/json"
        else:
            response.set_data(f"{exc.code} {exc.name}: {message}\n")
            response.mimetype = "text/plain"
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        body = incident(exc, request.method, request.path)
        if _is_api(request.path):
            return jsonify(body), 500
        return Response(f"500 Internal Server Error (incident {body['incident']})\n", status=500,
                        mimetype="text/plain")
