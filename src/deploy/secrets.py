"""The service's secrets on EC2: SSM Parameter Store SecureStrings, never the image or the repository.

Two parameters under ``<deploy.parameter_prefix>/<env>/``:

* ``credentials``: the credentials file (hashed API keys and users, ``python -m src.auth``);
* ``secret-key``: Flask's SECRET_KEY, the same on every host, so a sign-in on one host
  behind the load balancer is valid on the next and survives a release.

``python -m src.deploy secrets push`` uploads them (KMS-encrypted by SSM); the release
script fetches both on each host with the instance role, writes the credentials file
where the container reads it (read-only) and hands the key over in the environment.
``secrets sync`` re-fetches the credentials on every host without a restart: the
service picks the new file up within a second (a revoked key stops working).
"""

from __future__ import annotations

import logging
import secrets
import shlex
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from src.auth.store import CredentialsError, load
from src.config import DeploySettings
from src.deploy.errors import DeployError

log = logging.getLogger(__name__)

CREDENTIALS = "credentials"
SECRET_KEY = "secret-key"
MAX_PARAMETER_BYTES = 8192  # an Advanced parameter's limit (Intelligent-Tiering moves a large one there)
AUTH_IN_CONTAINER = "/app/auth"


def push(ssm: Any, cfg: DeploySettings, credentials: Path | None, new_secret_key: bool) -> list[str]:
    """Upload the credentials file and/or a fresh SECRET_KEY as SecureStrings; the parameter names written."""
    written = []
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
        written.append(_put(ssm, cfg.parameter(CREDENTIALS), text))
    if new_secret_key:
        written.append(_put(ssm, cfg.parameter(SECRET_KEY), secrets.token_hex(32)))
    return written


def _put(ssm: Any, name: str, value: str) -> str:
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True, Tier="Intelligent-Tiering",
                      Description="credit-default service secret (python -m src.deploy secrets push)")
    log.info("SSM SecureString %s written", name)
    return name


def present(ssm: Any, cfg: DeploySettings) -> dict[str, bool]:
    """Which of the two parameters exist (their values are not read)."""
    found = {}
    for name in (CREDENTIALS, SECRET_KEY):
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


def container_args(cfg: DeploySettings) -> str:
    """``docker run`` arguments: the host's auth folder read-only, AUTH_FILE in it, SECRET_KEY from the shell."""
    folder = shlex.quote(f"{cfg.state_dir.rstrip('/')}/auth")
    return (f"-v {folder}:{AUTH_IN_CONTAINER}:ro -e AUTH_FILE={AUTH_IN_CONTAINER}/credentials.json "
            '${SECRET_KEY:+-e SECRET_KEY}')
