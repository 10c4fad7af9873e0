"""Who may do what: API keys and scopes on every route class (the fast path included), rate limits, a
brute force, sign-in for the web form, /metrics on its own address, and the refusal to start open."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flask_api import create_app
from src.auth import policy
from src.auth.__main__ import main as auth_cli
from src.auth.store import create_key, load, revoke_key, set_user
from src.config import ConfigError, Settings
from tests.conftest import TrainedProject, default_applicant, uploads_under

PREDICT = "/api/v1/predict"
PASSWORD = "a long enough passphrase"


@dataclass
class Secured:
    app: Any
    file: Path
    keys: dict[str, str]  # scope -> plain key

    def client(self, address: str = "10.0.0.1") -> Any:
        client = self.app.test_client()
        client.environ_base["REMOTE_ADDR"] = address
        return client

    def body(self) -> dict[str, Any]:
        meta = self.app.extensions["credit_service"].model().meta
        return {"applicants": [default_applicant(meta)], "reasons": False}


def with_serve(settings: Settings, **changes: Any) -> Settings:
    auth = changes.pop("auth", {})
    serve = settings.serve.model_copy(update={**changes, "auth": settings.serve.auth.model_copy(update=auth)})
    return dataclasses.replace(settings, serve=serve)


def build(trained_project: TrainedProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
          settings: Settings | None = None) -> Any:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'predictions.db'}")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("AUTH_FILE", str(tmp_path / "credentials.json"))
    settings = uploads_under(settings or trained_project.settings, tmp_path / "uploads")
    return create_app({"SETTINGS": settings, "MODEL_URI": str(trained_project.model_dir),
                       "MODEL_LOADING": "sync", "TESTING": True})


@pytest.fixture(name="secured")
def secured_fixture(trained_project: TrainedProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    ) -> Iterator[Secured]:
    """An app with credentials: a key per scope, users alice (score) and prom (metrics)."""
    monkeypatch.setattr(policy, "CHECK_SECONDS", 0.0)  # a changed credentials file is seen at once
    file = tmp_path / "credentials.json"
    keys = {scope: create_key(file, f"{scope}-client", scope)[0] for scope in ("score", "metrics", "review", "admin")}
    set_user(file, "alice", PASSWORD, "score")
    set_user(file, "prom", PASSWORD, "metrics")
    app = build(trained_project, tmp_path, monkeypatch,
                with_serve(trained_project.settings, auth={"failed_limit": "20/minute"}))
    yield Secured(app=app, file=file, keys=keys)
    app.extensions["credit_service"].predlog.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_credentials_file_holds_only_hashes(secured: Secured) -> None:
    text = secured.file.read_text()
    assert secured.file.stat().st_mode & 0o777 == 0o600
    for key in secured.keys.values():
        secret = key.split("_", 2)[2]  # cdk_<id>_<secret>: the secret may hold "_" itself
        assert len(secret) == 43 and key not in text and secret not in text
    assert PASSWORD not in text and "scrypt$" in text


def test_every_route_class_needs_the_right_scope(secured: Secured) -> None:
    c, keys, body = secured.client(), secured.keys, secured.body()
    request_id = c.post(PREDICT, json=body, headers=bearer(keys["score"])).json["request_id"]
    assert secured.app.extensions["credit_service"].predlog.flush(10)
    routes = [("GET", "/api/v1/schema", "score", None), ("GET", "/api/v1/openapi.json", "score", None),
              ("POST", PREDICT, "score", body), ("GET", "/metrics", "metrics", None),
              ("POST", "/admin/reload", "admin", None), ("GET", f"/api/v1/decisions/{request_id}", "review", None)]
    for method, path, needs, payload in routes:
        call = c.post if method == "POST" else c.get
        missing = call(path, json=payload)
        assert missing.status_code == 401, path
        assert missing.headers["WWW-Authenticate"].startswith("Bearer") and "API key" in missing.json["error"]
        assert call(path, json=payload, headers=bearer("cdk_000000000000_" + "x" * 43)).status_code == 401
        for scope, key in keys.items():
            allowed = scope in (needs, "admin")
            for headers in (bearer(key), {"X-API-Key": key}):
                resp = call(path, json=payload, headers=headers)
                assert (resp.status_code < 400) == allowed, (path, scope, resp.status_code)
                if not allowed:
                    assert resp.status_code == 403 and needs in resp.json["error"], (path, scope)
    for path in ("/health", "/ready"):
        assert c.get(path).status_code == 200  # the load balancer's probes need no key


def test_the_flask_route_behind_the_fast_path_is_guarded_too(secured: Secured) -> None:
    """A body the fast path leaves to Flask (not JSON) is refused before Flask sees it."""
    c = secured.client()
    assert c.post(PREDICT, data="x", content_type="text/plain").status_code == 401
    assert c.post(PREDICT, data="x", content_type="text/plain",
                  headers=bearer(secured.keys["score"])).status_code == 415


def test_a_wrong_key_gets_the_same_answer_whatever_is_wrong(secured: Secured) -> None:
    """Unknown id, right id with a wrong secret, revoked, malformed: one status and one message."""
    score = secured.keys["score"]
    key_id = score.split("_")[1]
    revoked_raw, revoked = create_key(secured.file, "old", "score")
    revoke_key(secured.file, revoked.id)
    c = secured.client()
    answers = {c.get("/api/v1/schema", headers=bearer(k)).get_data() for k in
               ("cdk_123456789abc_" + "y" * 43, f"cdk_{key_id}_" + "z" * 43, revoked_raw, "garbage", score + "x")}
    assert len(answers) == 1 and b"missing or invalid API key" in answers.pop()


def test_a_revoked_key_stops_working_at_once(secured: Secured) -> None:
    raw, key = create_key(secured.file, "temp", "score")
    c = secured.client()
    assert c.get("/api/v1/schema", headers=bearer(raw)).status_code == 200
    revoke_key(secured.file, key.id)
    time.sleep(0.01)  # a new mtime
    assert c.get("/api/v1/schema", headers=bearer(raw)).status_code == 401


def test_revoking_every_key_locks_the_service_rather_than_opening_it(secured: Secured) -> None:
    for key in load(secured.file).keys.values():
        revoke_key(secured.file, key.id)
    secured.file.write_text(json.dumps({"version": 1, "keys": {}, "users": {}}))
    assert secured.client().post(PREDICT, json=secured.body()).status_code == 401


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(secured: Secured) -> None:
    raw, _ = create_key(secured.file, "bursty", "score", rate_limit="3/minute")
    c = secured.client()
    codes = [c.get("/api/v1/schema", headers=bearer(raw)).status_code for _ in range(3)]
    limited = c.get("/api/v1/schema", headers=bearer(raw))
    assert codes == [200, 200, 200] and limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60 and "rate limit" in limited.json["error"]
    assert c.get("/api/v1/schema", headers=bearer(secured.keys["score"])).status_code == 200  # others unaffected


def test_a_thousand_wrong_keys_change_nothing_and_are_rate_limited(secured: Secured) -> None:
    before = secured.file.read_bytes()
    attacker = secured.client("203.0.113.9")
    codes = [attacker.post(PREDICT, json=secured.body(), headers=bearer(f"cdk_{i:012x}_" + "a" * 43)).status_code
             for i in range(1000)]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    # the right key from that address is refused too while it is blocked: guessing gains nothing
    blocked = attacker.post(PREDICT, json=secured.body(), headers=bearer(secured.keys["score"]))
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
    assert secured.file.read_bytes() == before
    ok = secured.client("198.51.100.7").post(PREDICT, json=secured.body(), headers=bearer(secured.keys["score"]))
    assert ok.status_code == 200  # everyone else is served as before
    metrics = secured.client().get("/metrics", headers=bearer(secured.keys["metrics"])).get_data(as_text=True)
    assert re.search(r'http_requests_total\{[^}]*status="429"[^}]*\} 98[0-9]\.0', metrics)


def sign_in(c: Any, user: str, password: str, next_path: str = "/") -> Any:
    page = c.get(f"/login?next={next_path}")
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    return c.post(f"/login?next={next_path}", data={"csrf_token": token, "username": user, "password": password})


def test_the_form_needs_a_signed_in_user_whose_session_expires(secured: Secured) -> None:
    c = secured.client()
    first = c.get("/")
    assert first.status_code == 302 and first.headers["Location"].startswith("/login?next=/")
    assert sign_in(c, "alice", "wrong password!").status_code == 401
    assert sign_in(c, "nobody", PASSWORD).status_code == 401
    signed = sign_in(c, "alice", PASSWORD)
    assert signed.status_code == 302 and signed.headers["Location"] == "/"
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Expires=" in cookie
    page = c.get("/")
    assert page.status_code == 200 and "Score a loan applicant" in page.get_data(as_text=True)
    assert "alice" in page.get_data(as_text=True)
    # a new password ends the sessions made with the old one
    set_user(secured.file, "alice", PASSWORD + " changed", "score")
    time.sleep(0.01)
    assert c.get("/").status_code == 302


def test_every_decision_records_who_asked(secured: Secured) -> None:
    """The prediction log keeps the API key's id (never the key) or the signed-in user with each decision."""
    c, keys = secured.client(), secured.keys
    by_key = c.post(PREDICT, json=secured.body(), headers={"X-API-Key": keys["score"]}).json["request_id"]
    sign_in(c, "alice", PASSWORD)
    page = c.get("/").get_data(as_text=True)
    form = {**{k: str(v) for k, v in secured.body()["applicants"][0].items()},
            "csrf_token": re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page).group(1)}
    result = c.post("/", data=form)
    assert result.status_code == 200, result.get_data(as_text=True)[:500]
    by_user = re.search(r"Reference <code>([^<]+)</code>", result.get_data(as_text=True)).group(1)
    assert 'id="record-link"' not in result.get_data(as_text=True)  # alice may score, not look decisions up
    assert secured.app.extensions["credit_service"].predlog.flush(10)
    admin = secured.client("10.0.0.9")
    key_id = keys["score"].split("_")[1]
    recorded = admin.get(f"/api/v1/decisions/{by_key}", headers=bearer(keys["admin"])).json
    assert recorded["requested_by"] == f"key:{key_id}" and recorded["source"] == "api"
    assert keys["score"] not in str(recorded)
    recorded = admin.get(f"/api/v1/decisions/{by_user}", headers=bearer(keys["admin"])).json
    assert recorded["requested_by"] == "user:alice" and recorded["source"] == "form"


def test_sign_in_never_redirects_off_site(secured: Secured) -> None:
    resp = sign_in(secured.client(), "alice", PASSWORD, next_path="//evil.example/x")
    assert resp.status_code == 302 and resp.headers["Location"] == "/"


def test_a_metrics_only_user_may_not_score_and_sign_out_ends_the_session(secured: Secured) -> None:
    c = secured.client()
    sign_in(c, "prom", PASSWORD)
    assert c.get("/").status_code == 403
    c2 = secured.client("10.0.0.2")
    sign_in(c2, "alice", PASSWORD)
    page = c2.get("/").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert c2.post("/logout", data={"csrf_token": token}).status_code == 302
    assert c2.get("/").status_code == 302


def test_failed_sign_ins_are_rate_limited(secured: Secured) -> None:
    c = secured.client("203.0.113.50")
    codes = [sign_in(c, "alice", f"guess number {i}").status_code for i in range(25)]
    assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
    assert sign_in(c, "alice", PASSWORD).status_code == 429  # not even the right one, from there, for now


def test_a_trusted_proxy_header_signs_the_user_in(trained_project: TrainedProject, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    create_key(tmp_path / "credentials.json", "k", "score")
    app = build(trained_project, tmp_path, monkeypatch,
                with_serve(trained_project.settings, auth={"user_header": "X-Forwarded-User"}))
    c = app.test_client()
    assert c.get("/").status_code == 302
    assert c.get("/", headers={"X-Forwarded-User": "bob@example.com"}).status_code == 200


def test_metrics_on_their_own_address(trained_project: TrainedProject, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    raw, _ = create_key(tmp_path / "credentials.json", "k", "admin")
    app = build(trained_project, tmp_path, monkeypatch,
                with_serve(trained_project.settings, metrics_bind="127.0.0.1:9109"))
    c, there = app.test_client(), {"base_url": "http://127.0.0.1:9109"}
    off = c.get("/metrics", headers=bearer(raw))
    assert off.status_code == 404 and "127.0.0.1:9109" in off.json["error"]
    assert "http_requests_total" in c.get("/metrics", **there).get_data(as_text=True)  # no key there
    assert c.get("/health", **there).status_code == 200
    assert c.post(PREDICT, json={}, headers=bearer(raw), **there).status_code == 404
    assert c.get("/", **there).status_code == 404


def test_open_on_loopback_only_and_says_so(trained_project: TrainedProject, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        app = build(trained_project, tmp_path, monkeypatch)
    assert "running OPEN" in caplog.text
    meta = app.extensions["credit_service"].model().meta
    assert app.test_client().post(PREDICT, json={"applicants": [default_applicant(meta)]}).status_code == 200
    assert app.test_client().get("/").status_code == 200
    monkeypatch.setenv("SERVE_BIND", "0.0.0.0:8000")
    with pytest.raises(ConfigError, match=r"refusing to start open on 0\.0\.0\.0:8000.*AUTH_ALLOW_OPEN"):
        build(trained_project, tmp_path, monkeypatch)
    monkeypatch.setenv("AUTH_ALLOW_OPEN", "maybe")
    with pytest.raises(ConfigError, match="AUTH_ALLOW_OPEN must be true or false, got 'maybe'"):
        build(trained_project, tmp_path, monkeypatch)
    monkeypatch.setenv("AUTH_ALLOW_OPEN", "true")
    assert build(trained_project, tmp_path, monkeypatch).test_client().get("/health").status_code == 200
    monkeypatch.delenv("AUTH_ALLOW_OPEN")
    create_key(tmp_path / "credentials.json", "k", "score")
    assert build(trained_project, tmp_path, monkeypatch).test_client().get("/api/v1/schema").status_code == 401


@pytest.mark.parametrize(("bind", "loopback"), [("127.0.0.1:8000", True), ("[::1]:8000", True),
                                                 ("localhost:8000", True), ("unix:/run/x.sock", True),
                                                 ("0.0.0.0:8000", False), ("10.1.2.3:8000", False),
                                                 ("[::]:8000", False), ("example.com:80", False)])
def test_loopback_addresses(bind: str, loopback: bool) -> None:
    assert policy.is_loopback(bind) is loopback


def test_auth_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    file = tmp_path / "c.json"
    assert auth_cli(["--file", str(file), "keys", "create", "--name", "lender-a", "--rate-limit", "5/second"]) == 0
    key = capsys.readouterr().out.strip()
    assert re.fullmatch(r"cdk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert auth_cli(["--file", str(file), "keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert "lender-a" in listing and "5/second" in listing and "live" in listing and key not in listing
    assert auth_cli(["--file", str(file), "keys", "revoke", key.split("_")[1]]) == 0
    auth_cli(["--file", str(file), "keys", "list"])
    assert "revoked" in capsys.readouterr().out
    assert auth_cli(["--file", str(file), "keys", "create", "--name", "x", "--rate-limit", "lots"]) == 2
    assert "'lots' is not a rate limit" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("short\n"))
    assert auth_cli(["--file", str(file), "users", "add", "carol", "--password-stdin"]) == 2
    assert "at least 12 characters" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(PASSWORD + "\n"))
    assert auth_cli(["--file", str(file), "users", "add", "carol", "--scope", "admin", "--password-stdin"]) == 0
    assert load(file).verify_password("carol", PASSWORD) is not None
    assert auth_cli(["--file", str(file), "users", "remove", "carol"]) == 0
    assert auth_cli(["--file", str(file), "users", "remove", "carol"]) == 2
    file.write_text("{not json")
    assert auth_cli(["--file", str(file), "keys", "list"]) == 2
    assert "not JSON" in capsys.readouterr().err
