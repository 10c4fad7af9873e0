"""Rate limits with the ``limits`` library (the engine under Flask-Limiter), usable outside Flask.

Two kinds: each API key's requests (``serve.auth.rate_limit``, or the key's own), and
failed attempts per client address (wrong keys, wrong passwords:
``serve.auth.failed_limit``), checked *before* a credential is verified so guessing
is slowed whatever the guess. A sliding-window counter: constant memory per key (a
moving window keeps every timestamp, three times the CPU a hit at high limits).
``memory://`` storage counts per worker process; ``serve.auth.rate_limit_storage:
redis://...`` counts across workers and hosts.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter


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


class Throttle:
    """Hits and checks on one storage; the answer to a refused request is its Retry-After in seconds."""

    def __init__(self, storage_uri: str = "memory://") -> None:
        self.limiter = SlidingWindowCounterRateLimiter(storage_from_string(storage_uri))
        # With per-process counters (memory://) an address that has not failed lately cannot be blocked, so
        # its requests skip the limiter's check (several µs each); a shared store may hold others' counts.
        self._local = storage_uri.startswith("memory://")
        self._failed_at: dict[str, float] = {}  # address -> time.monotonic() of its last failure

    def failures_block(self, limit: str, address: str) -> int | None:
        """None when ``address`` may try a credential; else the seconds until it may again."""
        lookback = 2 * rate(limit).get_expiry()  # a sliding window weighs in the window before the current one
        if self._local and time.monotonic() - self._failed_at.get(address, -math.inf) >= lookback:
            return None
        return self.blocked(limit, "failed", address)

    def note_failure(self, limit: str, address: str) -> None:
        """A wrong key or password from ``address``."""
        now = time.monotonic()
        if len(self._failed_at) > 10_000:  # forget the addresses whose failures have aged out
            lookback = 2 * rate(limit).get_expiry()
            self._failed_at = {a: t for a, t in self._failed_at.items() if now - t < lookback}
        self._failed_at[address] = now
        self.hit(limit, "failed", address)

    def hit(self, limit: str, *identity: str) -> int | None:
        """Count one request; None when allowed, else the seconds until the next would be."""
        item = rate(limit)
        if self.limiter.hit(item, *identity):
            return None
        return self.retry_after(item, *identity)

    def blocked(self, limit: str, *identity: str) -> int | None:
        """Without counting: None when another hit would be allowed, else the seconds to wait."""
        item = rate(limit)
        if self.limiter.test(item, *identity):
            return None
        return self.retry_after(item, *identity)

    def retry_after(self, item: RateLimitItem, *identity: str) -> int:
        reset = self.limiter.get_window_stats(item, *identity).reset_time
        return max(1, math.ceil(reset - time.time()))
