"""Sign-in for the web pages (Flask-Login): users from the credentials file, sessions that expire.

Once credentials exist every page but /login needs a signed-in user whose scope
allows scoring. The session is Flask's signed cookie, permanent for
``serve.auth.session_minutes`` and renewed by each request (so it ends after that
long idle); it remembers the user's password fingerprint, so a new password or a
removed user ends it. Failed sign-ins count against the address's
``serve.auth.failed_limit``. Behind an authenticating proxy, ``serve.auth.user_header``
names the header that carries the signed-in user instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, current_app, redirect, render_template, request, session, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from src.auth.policy import CredentialSource
from src.auth.store import User, allows
from src.auth.throttle import Throttle
from src.config import AuthSettings

log = logging.getLogger(__name__)

bp = Blueprint("signin", __name__)
# The signed-in pages, and the scope each needs (admin may do everything).
PROTECTED_BLUEPRINTS = {"views": "score", "uploads": "score", "review": "review", "model_page": "review",
                        "monitoring_page": "metrics"}
NEEDS_WORDS = {"score": "score applicants", "review": "look up decisions or review the model",
               "metrics": "see the monitoring"}
HEADER_SCOPE = "score"  # a user named by the proxy's header and not in the credentials file


@dataclass(frozen=True)
class SignedIn:
    """Flask-Login's user: the name, the scope and (for a file user) the password fingerprint."""

    name: str
    scope: str
    fingerprint: str = ""
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False

    def get_id(self) -> str:
        return f"{self.fingerprint}:{self.name}"


class SignInForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


def signed_in() -> str | None:
    """Who fills in the form, for the prediction log: ``user:<name>`` (signed in, or named by the proxy's
    header); None when the form is open."""
    user = current_user
    return f"user:{user.name}"[:160] if user and user.is_authenticated else None


def _from_user(user: User) -> SignedIn:
    return SignedIn(name=user.name, scope=user.scope, fingerprint=user.fingerprint)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never //elsewhere or a full URL)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("views.index")


def install(app: Flask, source: CredentialSource, settings: AuthSettings, throttle: Throttle) -> None:
    app.config.update(PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.session_minutes),
                      SESSION_COOKIE_SECURE=settings.secure_cookies, SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax")
    manager = LoginManager(app)
    manager.login_view = "signin.login"
    manager.login_message = None
    app.extensions["credit_signin"] = (source, settings, throttle)

    @app.context_processor
    def pages() -> dict[str, Any]:
        """``may(page)``: whether the header links a signed-in page (all of them while the service runs open)."""

        def may(blueprint: str) -> bool:
            if not source.required:
                return True
            return bool(current_user and current_user.is_authenticated
                        and allows(current_user.scope, PROTECTED_BLUEPRINTS[blueprint]))

        return {"may": may}

    @manager.user_loader
    def load_user(user_id: str) -> SignedIn | None:
        fingerprint, _, name = user_id.partition(":")
        user = source.current().users.get(name)
        return _from_user(user) if user is not None and user.fingerprint == fingerprint else None

    @manager.request_loader
    def from_proxy(req: Any) -> SignedIn | None:
        if settings.user_header is None:
            return None
        name = req.headers.get(settings.user_header, "").strip()
        if not name:
            return None
        user = source.current().users.get(name)
        return _from_user(user) if user is not None else SignedIn(name=name, scope=HEADER_SCOPE)

    @app.before_request
    def require_sign_in() -> Any:
        if request.blueprint not in PROTECTED_BLUEPRINTS:
            return None
        source.current()  # (credentials added since start-up make it required)
        if not source.required:
            return None
        if not current_user.is_authenticated:
            return redirect(url_for("signin.login", next=request.full_path.rstrip("?")))
        needed = PROTECTED_BLUEPRINTS[request.blueprint]
        if not allows(current_user.scope, needed):
            return render_template("signin.html", form=SignInForm(), model=None,
                                   error=f"Your account ({current_user.scope}) may not {NEEDS_WORDS[needed]}."), 403
        return None

    app.register_blueprint(bp)


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    source, settings, throttle = _parts()
    source.current()
    form = SignInForm()
    if request.method == "GET" or not source.required:
        if not source.required:
            return redirect(safe_next(request.args.get("next")))
        return render_template("signin.html", form=form, model=None, error=None)
    address = request.remote_addr or ""
    wait = throttle.failures_block(settings.failed_limit, address)
    if wait is not None:
        return _page(form, f"Too many failed sign-ins from this address. Try again in {wait} seconds.", 429,
                     {"Retry-After": str(wait)})
    if not form.validate():
        return _page(form, "Enter your user name and password.", 400)
    user = source.current().verify_password(form.username.data or "", form.password.data or "")
    if user is None:
        throttle.note_failure(settings.failed_limit, address)
        log.info("failed sign-in for %r from %s", (form.username.data or "")[:64], address)
        return _page(form, "That user name and password do not match.", 401)
    session.clear()  # no session fixation: a fresh session for the signed-in user
    login_user(_from_user(user))
    session.permanent = True
    log.info("%s signed in from %s", user.name, address)
    return redirect(safe_next(request.args.get("next")))


@bp.post("/logout")
def logout() -> Response:
    logout_user()
    session.clear()
    return redirect(url_for("signin.login"))


def _parts() -> tuple[CredentialSource, AuthSettings, Throttle]:
    return current_app.extensions["credit_signin"]


def _page(form: SignInForm, error: str, status: int, headers: dict[str, str] | None = None) -> Any:
    form.password.data = ""
    return render_template("signin.html", form=form, model=None, error=error), status, headers or {}
