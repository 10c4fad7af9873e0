"""Who may use the service: API keys and web users, kept hashed in one JSON file.

An API key is ``cdk_<id>_<secret>``: the id finds its record without trying every
hash, the 256-bit secret makes a fast hash (SHA-256) enough, as for any random
token. A password is chosen by a person, so it gets scrypt (stdlib, salted, memory-
hard). The file holds only hashes, is written atomically (a temporary file renamed
over it, under a lock, mode 0600) and may be shipped as an SSM SecureString. The
service re-reads it when it changes, so a revoked key stops working within a second.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# admin may do everything; score: predict and the form; metrics: /metrics; review: the decision lookup (page and API)
SCOPES = ("score", "metrics", "review", "admin")
KEY_PREFIX = "cdk_"
_KEY = re.compile(r"^cdk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# scrypt: 2^15 x 8 x 128 bytes = 32 MiB and ~50 ms a check (OWASP's minimum is 2^17 x 8 x 1 at 128 MiB,
# or 2^15 at p=1 with r=8 as here for memory-constrained hosts)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_PASSWORD = 12
FORMAT_VERSION = 1


class CredentialsError(ValueError):
    """The credentials file or a CLI argument is wrong: one line saying which and why."""


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def allows(scope: str, needed: str) -> bool:
    """True when a credential of ``scope`` may do what needs ``needed``."""
    return scope in (needed, "admin")


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise CredentialsError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    return scope


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


_DUMMY_DIGEST = _digest(KEY_PREFIX + "0" * 12 + "_" + "0" * 43)


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    derived = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 << 20)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(derived).decode()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, expected = stored.split("$")
        if kind != "scrypt":
            return False
        derived = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                 maxmem=128 << 20)
    except ValueError:
        return False
    return hmac.compare_digest(derived, base64.b64decode(expected))


_DUMMY_PASSWORD = hash_password(secrets.token_hex(16))


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scope: str
    digest: str
    created: str
    rate_limit: str | None = None  # e.g. "600/minute"; None: serve.auth.rate_limit
    revoked: str | None = None


@dataclass(frozen=True)
class User:
    name: str
    scope: str
    password: str  # scrypt hash
    created: str

    @property
    def fingerprint(self) -> str:
        """Changes with the password: a session remembers it, so a new password ends old sessions."""
        return _digest(self.password)[:16]


@dataclass(frozen=True)
class Credentials:
    keys: dict[str, ApiKey] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """No key that works and no user: nobody could get in, so the service would have to run open."""
        return not self.users and not any(k.revoked is None for k in self.keys.values())

    def verify_key(self, raw: str) -> ApiKey | None:
        """The live key ``raw`` is, or None; the same work (one hash, one comparison) whatever is wrong."""
        match = _KEY.fullmatch(raw)
        key = self.keys.get(match.group(1)) if match else None
        ok = hmac.compare_digest(_digest(raw), key.digest if key is not None else _DUMMY_DIGEST)
        return key if ok and key is not None and key.revoked is None else None

    def verify_password(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        ok = password_matches(password, user.password if user is not None else _DUMMY_PASSWORD)
        return user if ok and user is not None else None

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION,
                "keys": {k: {f: v for f, v in asdict(key).items() if f != "id"} for k, key in self.keys.items()},
                "users": {n: {f: v for f, v in asdict(u).items() if f != "name"} for n, u in self.users.items()}}

    @classmethod
    def from_json(cls, data: Any, source: Path) -> Credentials:
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise CredentialsError(f"{source}: not a credentials file of version {FORMAT_VERSION}")
        try:
            keys = {k: ApiKey(id=k, **v) for k, v in (data.get("keys") or {}).items()}
            users = {n: User(name=n, **u) for n, u in (data.get("users") or {}).items()}
        except TypeError as exc:
            raise CredentialsError(f"{source}: malformed entry ({exc})") from None
        for entry in [*keys.values(), *users.values()]:
            if entry.scope not in SCOPES:
                raise CredentialsError(f"{source}: {entry.scope!r} is not a scope ({', '.join(SCOPES)})")
        return cls(keys=keys, users=users)


def load(path: Path) -> Credentials:
    """The credentials in ``path``; an absent file holds none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Credentials()
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"{path}: not JSON (line {exc.lineno}: {exc.msg})") from None
    return Credentials.from_json(data, path)


def save(path: Path, creds: Credentials) -> None:
    """Replace the file atomically: a reader sees the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(creds.to_json(), out, indent=2, sort_keys=True)
        out.write("\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@contextmanager
def editing(path: Path) -> Iterator[list[Credentials]]:
    """Read, let the caller replace ``box[0]``, write back; one editor at a time (a lock file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        box = [load(path)]
        before = box[0]
        yield box
        if box[0] is not before:
            save(path, box[0])


def create_key(path: Path, name: str, scope: str, rate_limit: str | None = None) -> tuple[str, ApiKey]:
    """A new key: the plain key (shown once, never stored) and its record."""
    check_scope(scope)
    if not name.strip():
        raise CredentialsError("a key needs a name (who or what uses it)")
    with editing(path) as box:
        key_id = secrets.token_hex(6)
        while key_id in box[0].keys:
            key_id = secrets.token_hex(6)
        raw = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        key = ApiKey(id=key_id, name=name.strip(), scope=scope, digest=_digest(raw), created=now(),
                     rate_limit=rate_limit)
        box[0] = replace(box[0], keys={**box[0].keys, key_id: key})
    return raw, key


def revoke_key(path: Path, key_id: str) -> ApiKey:
    with editing(path) as box:
        key = box[0].keys.get(key_id)
        if key is None:
            raise CredentialsError(f"no key {key_id!r} in {path} (python -m src.auth keys list)")
        if key.revoked is None:
            key = replace(key, revoked=now())
            box[0] = replace(box[0], keys={**box[0].keys, key_id: key})
    return key


def set_user(path: Path, name: str, password: str, scope: str) -> User:
    """Add a user, or give an existing one a new password and scope (which ends their sessions)."""
    check_scope(scope)
    if not _USER.fullmatch(name):
        raise CredentialsError(f"user name {name!r}: 1-64 letters, digits and . _ @ -, starting with a letter "
                               "or digit")
    if len(password) < MIN_PASSWORD:
        raise CredentialsError(f"the password must have at least {MIN_PASSWORD} characters")
    user = User(name=name, scope=scope, password=hash_password(password), created=now())
    with editing(path) as box:
        box[0] = replace(box[0], users={**box[0].users, name: user})
    return user


def remove_user(path: Path, name: str) -> None:
    with editing(path) as box:
        if name not in box[0].users:
            raise CredentialsError(f"no user {name!r} in {path} (python -m src.auth users list)")
        box[0] = replace(box[0], users={n: u for n, u in box[0].users.items() if n != name})
