"""Whether the service needs credentials, and the credentials as the file says now.

With keys or users in the credentials file, every protected route needs one. With
none, the service may run open only where nobody else can reach it (a loopback
address, as ``make run``), and says so; bound anywhere else (a container, a host) it
refuses to start unless told to run open (serve.auth.allow_open / AUTH_ALLOW_OPEN).
Once a service has needed credentials it keeps needing them: revoking the last key
locks everyone out rather than opening the door.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from src.auth.store import Credentials, CredentialsError, load
from src.config.errors import ConfigError

log = logging.getLogger(__name__)

KEY_ENVIRON = "credit.api_key"  # WSGI environ: the id of the key the gate let a request in with


def requester(environ: dict[str, Any]) -> str | None:
    """Who asked, for the prediction log: ``key:<id>`` of the API key a request was let in with."""
    key = environ.get(KEY_ENVIRON)
    return f"key:{key}" if key else None


CHECK_SECONDS = 1.0  # how often the file's size and time are looked at (a stat), at most


def is_loopback(bind: str) -> bool:
    """True for an address only this machine reaches: 127.x, ::1, localhost, or a unix socket."""
    if bind.startswith(("unix:", "/")):
        return True
    host = bind.rsplit(":", 1)[0] if ":" in bind else bind
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface address: reachable from elsewhere


class CredentialSource:
    """The credentials file, re-read when it changes; the last good copy when a new one is broken."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int] | None = None
        self._next_check = 0.0
        self._lock = threading.Lock()
        self.credentials = load(path)  # a broken file at start-up is an error, raised here
        self._signature = self._stat()
        self.required = not self.credentials.empty

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Credentials:
        """The credentials, looked up again at most every CHECK_SECONDS (a revoked key stops within it)."""
        now = time.monotonic()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + CHECK_SECONDS
                signature = self._stat()
                if signature != self._signature:
                    self._signature = signature
                    self._reload()
            finally:
                self._lock.release()
        return self.credentials

    def _reload(self) -> None:
        try:
            fresh = load(self.path)
        except CredentialsError as exc:
            log.error("credentials file unusable, keeping the previous credentials: %s", exc)
            return
        self.credentials = fresh
        if not fresh.empty and not self.required:
            log.warning("credentials appeared in %s: every protected route needs one from now on", self.path)
        self.required = self.required or not fresh.empty
        log.info("credentials reloaded from %s: %d live keys, %d users", self.path,
                 sum(k.revoked is None for k in fresh.keys.values()), len(fresh.users))


def open_or_refuse(source: CredentialSource, binds: Iterable[str], allow_open: bool, announced: bool = False,
                   ) -> None:
    """At start-up: nothing to do when credentials exist; else say the service is open, or refuse.

    ``announced``: a gunicorn worker, whose master has said it already (then only a debug line).
    """
    if source.required:
        return
    exposed = [b for b in binds if not is_loopback(b)]
    if exposed and not allow_open:
        raise ConfigError(
            f"refusing to start open on {', '.join(exposed)}: no API keys or users in {source.path}. Create one "
            "(python -m src.auth keys create --name NAME --scope score; python -m src.auth users add NAME), "
            "or set AUTH_ALLOW_OPEN=true (serve.auth.allow_open) to run open on purpose")
    log.log(logging.DEBUG if announced else logging.WARNING,
            "running OPEN: no API keys or users in %s, so anyone who can reach %s may score, read metrics "
            "and use the admin routes (python -m src.auth keys create ... to require keys)",
            source.path, ", ".join(binds))
