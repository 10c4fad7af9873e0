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

This module lives outside ``flask_api`` on purpose: gunicorn imports the worker class in
the master, and importing the app package there would load Flask, MLflow and friends
into the master (and pin their code across SIGHUP restarts).
"""

from __future__ import annotations

import os
import select
import selectors
import threading
import time
from concurrent.futures import Future
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

REQUESTS_ENV = "GUNICORN_KEEPALIVE_REQUESTS"
DEFAULT_REQUESTS_PER_CONNECTION = 100
ACCEPT_DELAY = 0.001  # seconds a busy worker leaves a new connection to an idle one


def _nothing() -> None:
    """Posted to the worker's method queue only to wake its event loop."""


def requests_per_connection() -> int:
    """$GUNICORN_KEEPALIVE_REQUESTS (0 = unlimited), else 100; a bad value is a start-up error naming it."""
    raw = os.environ.get(REQUESTS_ENV, "").strip()
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
            self._accept_paused_until = time.monotonic() + ACCEPT_DELAY
            ThreadWorker.set_accept_enabled(self, False)
            timer = threading.Timer(ACCEPT_DELAY, self.method_queue.defer, args=(_nothing,))
            timer.daemon = True
            timer.start()  # wakes the event loop when the pause is over
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

    def park_keepalive(self, conn: Any) -> None:
        """Back into the poller, as gthread does for a kept-alive connection of a running worker.

        The drain loop in ``ThreadWorker.run`` keeps polling while connections are open:
        the next request on ``conn`` is served (and closed, as the worker is stopping), or
        ``murder_keepalived`` closes it after the keep-alive timeout.
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

