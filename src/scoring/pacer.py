"""Spreads the prediction-log shipper's CPU into short slices, so it does not stall the serving workers.

The shipper shares the machine's cores with the gunicorn workers. Shipping a tenth of
a second of single-row decisions in one go is a 5-20 ms burst of CPU, and while it
runs the workers have one core fewer: the requests in flight queue behind it, and on
two cores that set the service's 99th-percentile latency (docs/performance.md). The
same CPU spent in slices of about a millisecond with rests between them costs them far less,
so a paced pass rests ``REST_RATIO`` times as long as each slice took, keeping the
shipper below ``1 / (1 + REST_RATIO)`` of a core. A lower priority (nice 19,
SCHED_IDLE) was tried and did not help: the burst still ran in one piece.

Pacing is for keeping up. A pass that starts with more than ``PACE_BACKLOG_BYTES``
waiting (a database outage just ended, a burst of large batches), a last pass on
the way out, and ``--once`` ship flat out.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SLICE_SECONDS = 0.001          # CPU a slice may use before the shipper rests
REST_RATIO = 5.0               # rest this many times as long as the slice took
PACE_BACKLOG_BYTES = 8 << 20   # more than this waiting at the start of a pass: no rests (~16,000 single rows)
ROWS_PER_CHECK = 16            # rows between two looks at the clock (a look is a system call)


class Pacer:
    """``rest(rows)`` after each bit of work: sleeps once the slice's CPU is used up, if pacing is on."""

    def __init__(self, slice_seconds: float = SLICE_SECONDS, rest_ratio: float = REST_RATIO,
                 cpu_clock: Callable[[], float] = time.thread_time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.slice_seconds = slice_seconds
        self.rest_ratio = rest_ratio
        self.cpu_clock = cpu_clock
        self.sleep = sleep
        self.active = False
        self.rested = 0.0  # seconds slept so far (for tests and the curious)
        self._rows = 0
        self._mark = 0.0

    def start(self, active: bool) -> None:
        """A pass begins: pace it or not; its first slice starts now."""
        self.active = active
        self._rows = 0
        self._mark = self.cpu_clock()

    def rest(self, rows: int = 1) -> None:
        """``rows`` more rows done; once the slice's CPU is spent, sleep ``rest_ratio`` times as long."""
        if not self.active:
            return
        self._rows += rows
        if self._rows < ROWS_PER_CHECK:
            return
        self._rows = 0
        used = self.cpu_clock() - self._mark
        if used >= self.slice_seconds:
            pause = used * self.rest_ratio
            self.sleep(pause)
            self.rested += pause
            self._mark = self.cpu_clock()
