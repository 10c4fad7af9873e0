"""Rate limits with the ``limits`` library (the engine under Flask-Limiter), usable outside Flask.

Two kinds: each API key's requests (``serve.auth.rate_limit``, or the key's own), and
failed attempts per client address (wrong keys, wrong passwords:
``serve.auth.failed_limit``), checked *before* a credential is verified so guessing
is slowed whatever the guess. Large limits use a sliding-window counter: constant memory
per key (a moving window keeps every timestamp, three times the CPU a hit at high limits),
but an estimate that lets a little more through across a window's edge. Failed attempts
and limits too small to batch use a moving window instead: exact (never a 21st guess in a
minute under 20/minute) at the cost of at most that many timestamps per address or key.
``memory://`` storage counts per worker process; ``serve.auth.rate_limit_storage:
redis://...`` counts across workers and hosts.

A key's requests are counted in batches (:meth:`Throttle.admit`): a hit costs the library
~6 µs in process, ~40 µs of a loaded server's CPU, so each request only adds one to its
key's tally, and the tally goes to the limiter (one hit of that cost) once it reaches a
sixtieth of the key's limit or a quarter second has passed. A key over its limit is then
refused until its window allows again. What a key may get beyond its limit is bounded by
that batch (1/60 of the limit); a limit too small to batch (under 60 a window) is counted
request by request.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter

log = logging.getLogger(__name__)


@lru_cache(maxsize=256)
def rate(text: str) -> RateLimitItem:
    """'600/minute' as a limit; ValueError naming the text when it is not one."""
    return parse(text)


def check_rate(text: str, key: str) -> str:
    """``text`` if it parses as a rate limit; else a ValueError saying what is expected."""
    try:
        rate(text)
    except ValueError:
        raise ValueError(f"{key}: {text!r} is not a rate limit (e.g. '600/minute', '10/second')") from None
    return text


BATCH_SECONDS = 0.25  # a key's tally goes to the limiter at least this often while it has requests
BATCH_SHARE = 60      # ... and whenever it reaches 1/BATCH_SHARE of the key's limit


class Throttle:
    """Hits and checks on one storage; the answer to a refused request is its Retry-After in seconds."""

    def __init__(self, storage_uri: str = "memory://") -> None:
        """``storage_uri`` (serve.auth.rate_limit_storage) is checked here: an unknown scheme, a missing client
        library or a store that does not answer is a ValueError saying which."""
        try:
            storage = storage_from_string(storage_uri)
            reachable = storage.check()
        except Exception as exc:  # limits raises ConfigurationError, or the client library's own errors
            raise ValueError(f"serve.auth.rate_limit_storage {storage_uri!r}: {exc}") from None
        if not reachable:
            raise ValueError(f"serve.auth.rate_limit_storage {storage_uri!r} does not answer")
        self.limiter = SlidingWindowCounterRateLimiter(storage)  # large limits, counted in batches
        try:  # small limits and failed attempts, exactly (memcached has no moving window: estimated there)
            self.exact: RateLimiter = MovingWindowRateLimiter(storage)
        except NotImplementedError:
            self.exact = self.limiter
        self._tally: dict[tuple[str, str], int] = {}  # (limit, key) -> requests not yet counted by the limiter
        self._blocked: dict[str, float] = {}  # key -> time.monotonic() until which it is refused
        self._next_count = 0.0
        self._counting = threading.Lock()
        self._next_store_error = 0.0
        # With per-process counters (memory://) an address that has not failed lately cannot be blocked, so
        # its requests skip the limiter's check (several µs each); a shared store may hold others' counts.
        self._local = storage_uri.startswith("memory://")
        self._failed_at: dict[str, float] = {}  # address -> time.monotonic() of its last failure

    def admit(self, limit: str, key: str) -> int | None:
        """One request of API key ``key`` under ``limit``: None when admitted, else its Retry-After (see above)."""
        now = time.monotonic()
        until = self._blocked.get(key)
        if until is not None and now < until:
            return max(1, math.ceil(until - now))
        item = rate(limit)
        batch = item.amount // BATCH_SHARE
        if batch < 2:  # a small limit: exact, request by request
            return self.hit(limit, "key", key)
        tally = self._tally[limit, key] = self._tally.get((limit, key), 0) + 1
        if tally >= batch or now >= self._next_count:
            self.count(now)
        return None

    def count(self, now: float | None = None) -> None:
        """Hand every key's tally to the limiter; a key that goes over is refused until its window allows."""
        now = time.monotonic() if now is None else now
        with self._counting:
            self._next_count = now + BATCH_SECONDS
            tallies, self._tally = self._tally, {}
            for (limit, key), cost in tallies.items():
                item = rate(limit)
                try:
                    if not self.limiter.hit(item, "key", key, cost=cost):
                        self._blocked[key] = now + self.retry_after(self.limiter, item, "key", key)
                except Exception as exc:
                    self._store_failed(exc)
            for key in [k for k, until in self._blocked.items() if until <= now]:
                del self._blocked[key]

    def failures_block(self, limit: str, address: str) -> int | None:
        """None when ``address`` may try a credential; else the seconds until it may again."""
        lookback = rate(limit).get_expiry()  # a moving window (memory:// has one) forgets a failure after this
        if self._local and time.monotonic() - self._failed_at.get(address, -math.inf) >= lookback:
            return None
        return self.blocked(limit, "failed", address)

    def note_failure(self, limit: str, address: str) -> None:
        """A wrong key or password from ``address``."""
        now = time.monotonic()
        if len(self._failed_at) > 10_000:  # forget the addresses whose failures have aged out
            lookback = rate(limit).get_expiry()
            self._failed_at = {a: t for a, t in self._failed_at.items() if now - t < lookback}
        self._failed_at[address] = now
        self.hit(limit, "failed", address)

    def hit(self, limit: str, *identity: str) -> int | None:
        """Count one request; None when allowed, else the seconds until the next would be."""
        return self._ask(self.exact.hit, limit, identity)

    def blocked(self, limit: str, *identity: str) -> int | None:
        """Without counting: None when another hit would be allowed, else the seconds to wait."""
        return self._ask(self.exact.test, limit, identity)

    def _ask(self, allowed: Callable[..., bool], limit: str, identity: tuple[str, ...]) -> int | None:
        item = rate(limit)
        try:
            return None if allowed(item, *identity) else self.retry_after(self.exact, item, *identity)
        except Exception as exc:  # a shared store gone away: serve (scoring outranks counting), and say so
            self._store_failed(exc)
            return None

    def _store_failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if now >= self._next_store_error:
            self._next_store_error = now + 30.0
            log.error("rate limit store failed (%s: %s); requests are let through uncounted meanwhile",
                      type(exc).__name__, exc)

    @staticmethod
    def retry_after(limiter: RateLimiter, item: RateLimitItem, *identity: str) -> int:
        reset = limiter.get_window_stats(item, *identity).reset_time
        return max(1, math.ceil(reset - time.time()))
