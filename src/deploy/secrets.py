"""The service's secrets on EC2: SSM Parameter Store SecureStrings, never the image or the repository.

Three parameters under ``<deploy.parameter_prefix>/<env>/``:

* ``credentials``: the credentials file (hashed API keys and users, ``python -m src.auth``);
* ``secret-key``: Flask's SECRET_KEY, the same on every host, so a sign-in on one host
  behind the load balancer is valid on the next and survives a release;
* ``smoke-key``: an API key with the score scope, which a host's release script uses to
  smoke-test the new container on 127.0.0.1 before the host goes back behind the balancer.

``python -m src.deploy secrets push`` uploads them (KMS-encrypted by SSM); the release
script fetches them on each host with the instance role, writes the credentials file
where the container reads it (read-only) and hands the key over in the environment.
``secrets sync`` re-fetches the credentials on every host without a restart: the
service picks the new file up within a second (a revoked key stops working).
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from src.auth.store import Credentials, CredentialsError, allows, load
from src.config import DeploySettings
from src.deploy.errors import DeployError

log = logging.getLogger(__name__)

CREDENTIALS = "credentials"
SECRET_KEY = "secret-key"
SMOKE_KEY = "smoke-key"
MAX_PARAMETER_BYTES = 8192  # an Advanced parameter's limit (Intelligent-Tiering moves a large one there)
AUTH_IN_CONTAINER = "/app/auth"


def push(ssm: Any, cfg: DeploySettings, credentials: Path | None, new_secret_key: bool,
         smoke_key: str | None = None) -> list[str]:
    """Upload the credentials file, a fresh SECRET_KEY and/or the hosts' smoke-test key as SecureStrings;
    the parameter names written. The smoke key must be a live key with the score scope in the credentials
    pushed with it, or else in those already in SSM."""
    written = []
    creds = None
    if credentials is not None:
        try:
            creds = load(credentials)
        except CredentialsError as exc:
            raise DeployError(str(exc)) from None
        if not credentials.exists() or creds.empty:
            raise DeployError(f"{credentials} holds no live key and no user: the hosts would refuse to start "
                              "(python -m src.auth keys create / users add first)")
        text = credentials.read_text(encoding="utf-8")
        if len(text.encode()) > MAX_PARAMETER_BYTES:
            raise DeployError(f"{credentials} is {len(text.encode())} bytes; an SSM parameter holds at most "
                              f"{MAX_PARAMETER_BYTES} (remove revoked keys)")
    if smoke_key is not None:
        smoke_key = smoke_key.strip()
        check_smoke_key(smoke_key, creds if creds is not None else stored_credentials(ssm, cfg))
    if credentials is not None:
        written.append(_put(ssm, cfg.parameter(CREDENTIALS), text))
    if new_secret_key:
        written.append(_put(ssm, cfg.parameter(SECRET_KEY), secrets.token_hex(32)))
    if smoke_key is not None:
        written.append(_put(ssm, cfg.parameter(SMOKE_KEY), smoke_key))
    return written


def stored_credentials(ssm: Any, cfg: DeploySettings) -> Credentials:
    """The credentials the hosts fetch (the SSM parameter), parsed; missing is a clear error."""
    name = cfg.parameter(CREDENTIALS)
    try:
        value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            raise DeployError(f"no {name} in SSM to check the smoke key against: push --credentials FILE "
                              "with it") from None
        raise
    try:
        return Credentials.from_json(json.loads(value), Path(name))
    except (ValueError, CredentialsError) as exc:
        raise DeployError(f"{name} in SSM is not a credentials file: {exc}") from None


def check_smoke_key(raw: str, creds: Credentials) -> None:
    """The key must get a host's smoke test through: live, and allowed to score."""
    key = creds.verify_key(raw)
    if key is None:
        raise DeployError("the smoke key ($API_KEY) is not a live key of the credentials the hosts use "
                          "(python -m src.auth keys create --scope score, then push both)")
    if not allows(key.scope, "score"):
        raise DeployError(f"the smoke key ({key.id}, scope {key.scope}) may not score: give a key with the "
                          "score scope")


def _put(ssm: Any, name: str, value: str) -> str:
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True, Tier="Intelligent-Tiering",
                      Description="credit-default service secret (python -m src.deploy secrets push)")
    log.info("SSM SecureString %s written", name)
    return name


def present(ssm: Any, cfg: DeploySettings) -> dict[str, bool]:
    """Which of the three parameters exist (their values are not read)."""
    found = {}
    for name in (CREDENTIALS, SECRET_KEY, SMOKE_KEY):
        try:
            ssm.get_parameter(Name=cfg.parameter(name), WithDecryption=False)
            found[name] = True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
                raise
            found[name] = False
    return found


def fetch_lines(cfg: DeploySettings, region: str) -> list[str]:
    """Shell lines (POSIX sh) for a host: the credentials file into ``<state_dir>/auth`` (replaced atomically,
    readable by the container's user only) and SECRET_KEY exported for ``docker run -e SECRET_KEY``.

    A missing parameter leaves things as they are: the container then refuses to start open, saying why.
    """
    q = shlex.quote
    auth_dir = q(f"{cfg.state_dir.rstrip('/')}/auth")
    get = f"aws ssm get-parameter --region {q(region)} --with-decryption --query Parameter.Value --output text"
    return [
        f"install -d -m 0750 -o 10001 -g 10001 {auth_dir}",
        f"if {get} --name {q(cfg.parameter(CREDENTIALS))} > {auth_dir}/.credentials.json.new; then "
        f"chown 10001:10001 {auth_dir}/.credentials.json.new && chmod 0400 {auth_dir}/.credentials.json.new && "
        f"mv -f {auth_dir}/.credentials.json.new {auth_dir}/credentials.json; "
        f"else rm -f {auth_dir}/.credentials.json.new; "
        f"echo 'no {cfg.parameter(CREDENTIALS)} in SSM: python -m src.deploy secrets push' >&2; fi",
        f"SECRET_KEY=$({get} --name {q(cfg.parameter(SECRET_KEY))} 2>/dev/null || true)",
        "export SECRET_KEY",
    ]


def smoke_lines(cfg: DeploySettings, region: str) -> list[str]:
    """Shell lines (POSIX sh) run right after the new container starts: the smoke test inside it, on
    127.0.0.1 (it waits for /ready, then scores one applicant), with the smoke key from SSM. A failure
    fails the SSM command, so the release never puts the host back and rolls back instead. With no key
    in SSM the test is skipped, saying so (a release through a target group refuses to start then), and
    so it is for an image built before it had the smoke test (a rollback to one must not fail on that)."""
    q = shlex.quote
    name = q(cfg.container_name)
    get = f"aws ssm get-parameter --region {q(region)} --with-decryption --query Parameter.Value --output text"
    test = (f"docker exec -e API_KEY {name} python -m src.deploy.smoke "
            f"http://127.0.0.1:{cfg.container_port} --ready-timeout {cfg.smoke_timeout:g} "
            f"--http-timeout {cfg.http_timeout:g}")
    return [
        f"SMOKE_KEY=$({get} --name {q(cfg.parameter(SMOKE_KEY))} 2>/dev/null || true)",
        # (docker cp reads the container's files whether or not it still runs: a crashed one fails the test)
        f'if [ -n "$SMOKE_KEY" ] && ! docker cp {name}:/app/src/deploy/smoke.py - >/dev/null 2>&1; then '
        "SMOKE_KEY=; echo 'this image has no smoke test (built before src/deploy/smoke.py): "
        "no smoke test on the host' >&2; fi",
        f'if [ -n "$SMOKE_KEY" ]; then API_KEY=$SMOKE_KEY {test}; echo "smoke test passed on the host"; '
        f"else echo 'no {cfg.parameter(SMOKE_KEY)} in SSM: no smoke test on the host "
        f"(python -m src.deploy secrets push --smoke-key)' >&2; fi",
    ]


def container_args(cfg: DeploySettings) -> str:
    """``docker run`` arguments: the host's auth folder read-only, AUTH_FILE in it, SECRET_KEY from the shell."""
    folder = shlex.quote(f"{cfg.state_dir.rstrip('/')}/auth")
    return (f"-v {folder}:{AUTH_IN_CONTAINER}:ro -e AUTH_FILE={AUTH_IN_CONTAINER}/credentials.json "
            '${SECRET_KEY:+-e SECRET_KEY}')
