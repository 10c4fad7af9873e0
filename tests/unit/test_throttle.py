"""The rate limiter's batching: a key gets at most one batch (1/60 of its limit) beyond its limit, a small limit
is counted request by request, and a tally below a batch still reaches the limiter within a quarter second."""

from __future__ import annotations

import time

import pytest

from src.auth import throttle
from src.auth.throttle import Throttle, rate


def test_a_key_gets_its_limit_and_at_most_one_batch_more() -> None:
    t = Throttle()
    answers = [t.admit("600/second", "k") for _ in range(1000)]  # well within one second
    admitted = answers.count(None)
    assert 600 <= admitted <= 600 + 600 // throttle.BATCH_SHARE, admitted
    refused = [a for a in answers if a is not None]
    assert refused and all(a >= 1 for a in refused) and answers[admitted:] == refused  # refused from then on
    assert t.admit("600/second", "other") is None  # another key is not touched


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
