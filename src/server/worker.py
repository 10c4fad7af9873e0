"""gunicorn's threaded (gthread) worker, made safe and fair for HTTP keep-alive.

Keep-alive saves every request a TCP handshake, a socket and gunicorn's per-connection
set-up: about a third of the server's CPU per single-row prediction here. Stock gthread
has two problems with it that this subclass fixes, and a third that keep-alive makes
worse:

1. **Restarts drop requests** (benoitc/gunicorn#1236). When a worker is told to stop
   (SIGHUP restart, SIGTERM, a model reload by restart), a request that was already
   running when the signal came is answered with ``Connection: keep-alive`` and then
   the connection is closed at once. A client that sends its next request on that
   connection (it was promised it could) gets "connection reset / remote end closed";
   clients do not retry a POST, so that prediction fails. Here such a connection stays
   open while the worker drains: its next request is served (with ``Connection:
   close``, like every answer a stopping worker gives) or, if none comes, it is closed
   after the usual keep-alive timeout, exactly as a running worker would.
2. **Connections stick to one worker.** A kept-alive connection stays with the worker
   that accepted it, so a few long-lived clients (a load balancer, a batch job) can pile
   onto one process while the other idles, and tail latency doubles. After
   ``GUNICORN_KEEPALIVE_REQUESTS`` requests (default 100) a connection is answered with
   ``Connection: close``; the client reconnects, and the new connection goes to the
   worker that accepts first, which is the less busy one (its main thread is not
   waiting for the GIL). nginx (``keepalive_requests``) and Envoy do the same.

3. **New connections go to whichever worker accepts first**, busy or not (all are
   woken for every connection, and on two cores the one already running wins: a burst
   of 32 connections all landed on one worker, and so did both connections of a
   two-client batch job). A worker serving a connection (a request running or about to
   arrive; idle kept-alive ones do not count) leaves a new one to the others for
   ACCEPT_DELAY (1 ms) and takes it itself only if it is still waiting then (every
   worker busy). Together with (2) this keeps the workers evenly loaded.

An idle kept-alive connection stays open DEFAULT_KEEPALIVE (75) seconds, longer than
the load balancer's idle timeout (60 s, infra/terraform/main.tf), so the balancer, not
the service, closes an idle connection. A service that closes first races the
balancer's next request on that connection, which the client then gets as a 502 (AWS
gives the same advice for ALB targets). A stopping worker keeps idle connections only
STOPPING_KEEPALIVE (5) seconds more, so a restart does not wait out the long timeout.

The subclass relies on gthread internals (the methods in ``VERIFIED_INTERNALS``). Their
source digests for the gunicorn release it was verified against are recorded below;
:func:`worker_class` (what gunicorn.conf.py asks) falls back to stock gthread, with a
warning, when the installed gunicorn's differ, and a unit test fails loudly then, so an
upgrade is re-verified before it ships. ``GUNICORN_WORKER_CLASS=gthread`` picks stock
gthread on purpose. gunicorn 27 fixes (1) itself, but MLflow requires gunicorn < 27
(tests/unit/test_dependencies.py says when that changes).

This module lives outside ``flask_api`` on purpose: gunicorn imports the worker class in
the master, and importing the app package there would load Flask, MLflow and friends
into the master (and pin their code across SIGHUP restarts).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import select
import selectors
import time
from concurrent.futures import Future
from functools import partial
from typing import Any

import gunicorn
from gunicorn.workers.gthread import ThreadWorker

from src.config import env

log = logging.getLogger(__name__)

WORKER_CLASS_ENV = env.GUNICORN_WORKER_CLASS
KEEPALIVE_WORKER = "src.server.worker.KeepAliveThreadWorker"
STOCK_WORKER = "gthread"
# ThreadWorker methods this subclass overrides, calls or whose loop it depends on, with the sha256
# (first 16 hex digits) of their source in the gunicorn release the subclass was verified against.
VERIFIED_GUNICORN = "26.2.0"
VERIFIED_INTERNALS = {
    "accept": "f8dcead3dce5c851",
    "set_accept_enabled": "140150ebfd3cae34",
    "handle_request": "a3ccb3ba1b4db837",
    "finish_request": "b9a75d3c2fba5dc0",
    "on_client_socket_readable": "aead1a3ea7b7daff",
    "murder_keepalived": "fa9a01fbf2ab15c5",
    "murder_pending": "7bf11f46454296e1",
    "wait_for_and_dispatch_events": "ea969b352482bd5c",
    "run": "e50ebf2d88b17eb2",
    "enqueue_req": "c9f428953d24acef",
}


def internals_digest(cls: type = ThreadWorker) -> dict[str, str]:
    """The source digest of each ThreadWorker method in VERIFIED_INTERNALS, as installed now."""
    digests = {}
    for name in VERIFIED_INTERNALS:
        method = getattr(cls, name, None)
        source = inspect.getsource(method) if method is not None else ""
        digests[name] = hashlib.sha256(source.encode()).hexdigest()[:16] if source else "missing"
    return digests


def changed_internals() -> list[str]:
    """The relied-on ThreadWorker methods whose source differs from the verified release's (empty: none)."""
    now = internals_digest()
    return [name for name, digest in VERIFIED_INTERNALS.items() if now[name] != digest]


def worker_class() -> str:
    """gunicorn's worker_class: $GUNICORN_WORKER_CLASS (keepalive | gthread), keepalive by default.

    The keep-alive worker is used only on the gunicorn it was verified against; on another
    whose relied-on internals changed, stock gthread serves (correct, less even under load)
    and a warning says why.
    """
    wanted = (env.text(WORKER_CLASS_ENV) or "keepalive").lower()
    if wanted == STOCK_WORKER:
        return STOCK_WORKER
    if wanted != "keepalive":
        raise ValueError(f"{WORKER_CLASS_ENV} must be keepalive or gthread, got {wanted!r}")
    changed = changed_internals()
    if changed:
        log.warning("gunicorn %s changed ThreadWorker.%s since %s, which KeepAliveThreadWorker was verified "
                    "against: serving with stock gthread", gunicorn.__version__, ", ".join(changed),
                    VERIFIED_GUNICORN)
        return STOCK_WORKER
    return KEEPALIVE_WORKER


REQUESTS_ENV = env.GUNICORN_KEEPALIVE_REQUESTS
DEFAULT_KEEPALIVE = 75  # seconds an idle connection stays open (gunicorn.conf.py; above the balancer's 60)
STOPPING_KEEPALIVE = 5.0  # seconds a stopping worker keeps an idle connection (its next request is served)
DEFAULT_REQUESTS_PER_CONNECTION = 100
ACCEPT_DELAY = 0.001  # seconds a busy worker leaves a new connection to an idle one


def requests_per_connection() -> int:
    """$GUNICORN_KEEPALIVE_REQUESTS (0 = unlimited), else 100; a bad value is a start-up error naming it."""
    raw = env.text(REQUESTS_ENV, "") or ""
    if not raw:
        return DEFAULT_REQUESTS_PER_CONNECTION
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{REQUESTS_ENV} must be a whole number of requests, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{REQUESTS_ENV} must be >= 0 (0 = no limit), got {value}")
    return value


def promised_keepalive(future: Future[Any]) -> bool:
    """The request finished and its response told the client the connection stays open."""
    return future.done() and not future.cancelled() and future.exception() is None and future.result() is True


class KeepAliveThreadWorker(ThreadWorker):
    """gthread worker that never closes a connection it promised to keep, and recycles long-lived ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests_per_connection = requests_per_connection()
        self._accept_paused_until = 0.0  # while > now: a busy worker's pause (0 = none)
        self._take_waiting = False  # a pause just ended with a connection still waiting

    # -- prefer idle workers for new connections -----------------------------------------------------
    def accept(self, listener: Any) -> None:
        """A busy worker leaves a new connection to an idle one for ACCEPT_DELAY, then takes it itself.

        A connection still waiting when the pause ends was left by every other worker
        (all busy), so it is accepted at once.
        """
        if self._take_waiting:  # waiting since before our pause: nobody else took it
            self._take_waiting = False
            super().accept(listener)
            return
        if self.busy() and self.alive:
            self._accept_paused_until = time.monotonic() + ACCEPT_DELAY  # the event loop wakes then (below)
            ThreadWorker.set_accept_enabled(self, False)
            return
        super().accept(listener)

    def busy(self) -> bool:
        """One of our connections is being served (not idling in keep-alive): an unoccupied worker takes the next."""
        return self.cfg.workers > 1 and self.nr_conns > len(self.keepalived_conns)

    def set_accept_enabled(self, enabled: bool) -> None:
        if enabled and not self._accepting and self._accept_paused_until:
            if time.monotonic() < self._accept_paused_until:
                return  # run() asks again on its next turn
            self._accept_paused_until = 0.0
            # A connection still waiting now was left by every other worker: take it without pausing again.
            self._take_waiting = bool(select.select(self.sockets, [], [], 0)[0])
        super().set_accept_enabled(enabled)

    def handle_request(self, req: Any, conn: Any) -> bool:
        """Count requests per connection; the last one allowed is answered with ``Connection: close``."""
        served = getattr(conn, "requests_served", 0) + 1
        conn.requests_served = served
        if self.requests_per_connection and served >= self.requests_per_connection:
            req.must_close = True  # gunicorn then writes "Connection: close" and closes after the response
        return super().handle_request(req, conn)

    def finish_request(self, conn: Any, fs: Future[Any]) -> None:
        """While stopping, keep a connection whose response promised keep-alive (see the module docstring)."""
        if not self.alive and promised_keepalive(fs):
            self.park_keepalive(conn)
            return
        super().finish_request(conn, fs)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """Wake when an accept pause is over (``run`` then accepts again); while stopping, wake at least once
        a second, so idle connections are closed on time.

        (``run``'s drain loop waits for the whole remaining graceful timeout, so an idle
        connection kept a stopping worker alive, and a restart or stop waiting, that long.)
        """
        if self._accept_paused_until:
            timeout = min(timeout, max(0.0, self._accept_paused_until - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout if self.alive else min(timeout, 1.0))

    def murder_keepalived(self) -> None:
        """Close idle connections past their timeout; while stopping, each lives at most STOPPING_KEEPALIVE more.

        (Connections that never sent a request, ``pending_conns``, get the same cut: ``run``
        calls ``murder_pending`` right after this.)
        """
        if not self.alive:
            cap = time.monotonic() + min(self.cfg.keepalive, STOPPING_KEEPALIVE)
            for conn in (*self.keepalived_conns, *self.pending_conns):
                conn.timeout = min(conn.timeout, cap)
        super().murder_keepalived()

    def park_keepalive(self, conn: Any) -> None:
        """Back into the poller, as gthread does for a kept-alive connection of a running worker.

        The drain loop in ``ThreadWorker.run`` keeps polling while connections are open:
        the next request on ``conn`` is served (and closed, as the worker is stopping), or
        ``murder_keepalived`` closes it after STOPPING_KEEPALIVE (the keep-alive timeout if shorter).
        """
        try:
            conn.sock.setblocking(False)
            conn.set_timeout()
            self.keepalived_conns.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn))
        except (OSError, ValueError):  # the client already closed it
            if conn in self.keepalived_conns:
                self.keepalived_conns.remove(conn)
            self.nr_conns -= 1
            conn.close()

