"""The rate limiter's batching: a key gets at most one batch (1/60 of its limit) beyond its limit, a small limit
is counted request by request, and a tally below a batch still reaches the limiter within a quarter second."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from limits.storage import memory

from src.auth import throttle
from src.auth.throttle import Throttle, rate


def test_a_key_gets_its_limit_and_at_most_one_batch_more() -> None:
    t = Throttle()
    # an hourly window: the loop (well under a second, even on a busy machine) never straddles two windows
    answers = [t.admit("6000/hour", "k") for _ in range(10_000)]
    admitted = answers.count(None)
    assert 6000 <= admitted <= 6000 + 6000 // throttle.BATCH_SHARE, admitted
    refused = [a for a in answers if a is not None]
    assert refused and all(a >= 1 for a in refused) and answers[admitted:] == refused  # refused from then on
    assert t.admit("6000/hour", "other") is None  # another key is not touched


def test_a_small_limit_is_counted_request_by_request() -> None:
    t = Throttle()
    answers = [t.admit("100/minute", "k") for _ in range(101)]  # 100 // 60 < 2: no batching
    assert answers[:100] == [None] * 100 and answers[100] is not None and answers[100] >= 1


def test_a_tally_below_a_batch_reaches_the_limiter_within_a_quarter_second(monkeypatch: pytest.MonkeyPatch) -> None:
    t = Throttle()
    limit = "6000/minute"  # batches of 100
    for _ in range(5):
        assert t.admit(limit, "k") is None
    # the first request was counted at once (it started the quarter second); the next four wait in the tally
    assert t.limiter.get_window_stats(rate(limit), "key", "k").remaining == 6000 - 1
    time.sleep(throttle.BATCH_SECONDS + 0.05)
    assert t.admit(limit, "k") is None
    assert t.limiter.get_window_stats(rate(limit), "key", "k").remaining == 6000 - 6


@pytest.mark.parametrize(("uri", "says"), [("bogus://x", "unknown storage scheme"),
                                           ("redis://127.0.0.1:9", "rate_limit_storage 'redis://127.0.0.1:9'")])
def test_a_store_that_cannot_work_is_named_at_start(uri: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"serve\.auth\.rate_limit_storage") as raised:
        Throttle(uri)
    assert says in str(raised.value)


def test_a_store_failing_later_lets_requests_through_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    t = Throttle()

    def broken(*_args: object, **_kwargs: object) -> bool:
        raise ConnectionError("store gone")

    t.exact.hit = broken  # type: ignore[method-assign]
    with caplog.at_level("ERROR"):
        assert [t.hit("1/minute", "k", "a") for _ in range(3)] == [None, None, None]
    assert caplog.text.count("rate limit store failed") == 1  # once per 30 s, not per request


def test_failed_attempts_are_counted_exactly_across_a_window_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    """10 failures just before a minute turns and 10 just after: the 21st attempt is refused. (A sliding-window
    counter estimates the first 10 at 59/60 of their number there, and would let a 21st guess through.)"""
    clock = SimpleNamespace(now=60.0 * 29_000_000 + 59.5)  # half a second before a minute's edge
    monkeypatch.setattr(memory, "time", SimpleNamespace(time=lambda: clock.now))
    t = Throttle()
    for _ in range(10):
        assert t.failures_block("20/minute", "203.0.113.7") is None
        t.note_failure("20/minute", "203.0.113.7")
    clock.now += 1.0
    for _ in range(10):
        assert t.failures_block("20/minute", "203.0.113.7") is None
        t.note_failure("20/minute", "203.0.113.7")
    wait = t.failures_block("20/minute", "203.0.113.7")
    assert wait is not None and wait >= 1
    assert t.failures_block("20/minute", "198.51.100.1") is None  # another address is not touched
