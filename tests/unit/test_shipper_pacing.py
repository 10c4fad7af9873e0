"""The shipper's pacing: a pass that keeps up spends its CPU in short slices with rests between them (so it does
not stall the workers sharing the cores), ships exactly what an unpaced pass ships, and goes flat out when a
backlog has built up or on its way out."""

from __future__ import annotations

import gc
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from src.scoring import shipper as shipper_module
from src.scoring.logdb import WAL_CHECKPOINT_PAGES, FastInsert, make_engine, predictions
from src.scoring.pacer import ROWS_PER_CHECK, Pacer
from src.scoring.shipper import Shipper
from src.scoring.spool import SpoolWriter, encode


class FakeCpu:
    """A CPU clock that advances ``step`` seconds at every look, and a sleep that only records."""

    def __init__(self, step: float) -> None:
        self.now, self.step, self.slept = 0.0, step, []

    def clock(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def pacer(cpu: FakeCpu) -> Pacer:
    return Pacer(slice_seconds=0.001, rest_ratio=5.0, cpu_clock=cpu.clock, sleep=cpu.sleep)


def test_the_pacer_rests_in_proportion_to_the_cpu_a_slice_used() -> None:
    cpu = FakeCpu(step=0.0006)  # each look at the clock: 0.6 ms more CPU
    pace = pacer(cpu)
    pace.start(True)  # one look: the slice starts
    pace.rest(ROWS_PER_CHECK - 1)
    assert cpu.slept == []  # not enough rows to look at the clock yet
    pace.rest(1)  # a look: 0.6 ms used, under the 1 ms slice
    assert cpu.slept == []
    pace.rest(ROWS_PER_CHECK)  # 1.2 ms used: rest five times as long, and a new slice starts
    assert cpu.slept == [pytest.approx(0.006)]
    pace.rest(ROWS_PER_CHECK)  # 0.6 ms into the new slice
    assert len(cpu.slept) == 1 and pace.rested == pytest.approx(0.006)


def test_an_unpaced_pass_never_looks_at_the_clock_or_sleeps() -> None:
    cpu = FakeCpu(step=1.0)
    pace = pacer(cpu)
    pace.start(False)
    looked = cpu.now
    for _ in range(10):
        pace.rest(1000)
    assert cpu.slept == [] and cpu.now == looked


def spooled(spool: Path, records: int) -> None:
    writer = SpoolWriter(spool)
    for i in range(records):
        rows = [{"x": i, "y": k} for k in range(1 + i % 3)]
        writer.append(encode(f"r{i:04d}", time.time(), "api", "m", "1", rows,
                             [{"probability_of_default": 0.1, "decision": "approve"}] * len(rows), "key:k"))
    writer.close()


def logged(url: str) -> list[tuple[Any, ...]]:
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(predictions.c.request_id, predictions.c.row_index, predictions.c.features)
                            .order_by(predictions.c.id)).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def paced_shipper(url: str, spool: Path, cpu: FakeCpu) -> Shipper:
    shipper = Shipper(url, spool)
    shipper.pacer = pacer(cpu)
    return shipper


def test_a_paced_pass_rests_between_slices_and_ships_exactly_what_an_unpaced_one_does(tmp_path: Path) -> None:
    for name in ("paced", "flat"):
        spooled(tmp_path / name, 300)
    cpu = FakeCpu(step=0.0004)
    paced = paced_shipper(f"sqlite:///{tmp_path / 'paced.db'}", tmp_path / "paced", cpu)
    flat = Shipper(f"sqlite:///{tmp_path / 'flat.db'}", tmp_path / "flat")
    assert paced.ship_once(pace=True) == flat.ship_once() == sum(1 + i % 3 for i in range(300))
    # 600 rows, a look every 16 rows while decoding and every ~16 while inserting: many slices, each with a rest
    assert len(cpu.slept) >= 20 and all(s >= 0.005 for s in cpu.slept)
    assert logged(f"sqlite:///{tmp_path / 'paced.db'}") == logged(f"sqlite:///{tmp_path / 'flat.db'}")
    assert paced.backlog() == 0


def test_a_pass_with_a_backlog_ships_flat_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spooled(tmp_path / "spool", 300)
    monkeypatch.setattr(shipper_module, "PACE_BACKLOG_BYTES", 1000)  # 300 records are far more than that
    cpu = FakeCpu(step=0.0004)
    shipper = paced_shipper(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spool", cpu)
    assert shipper.ship_once(pace=True) == 600
    assert cpu.slept == []


def test_the_loop_paces_its_passes_but_not_the_last_one_on_the_way_out(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shipper = Shipper(f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spool", interval=0.001)
    asked: list[bool] = []
    stop = threading.Event()

    def ship_once(pace: bool = False) -> int:
        asked.append(pace)
        if len(asked) == 3:
            stop.set()
        return 0

    monkeypatch.setattr(shipper, "ship_once", ship_once)
    shipper.run(stop)
    assert asked == [True, True, True, False]


def test_the_insert_in_chunks_pauses_after_each_and_inserts_every_row(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    predictions.metadata.create_all(engine)
    insert = FastInsert(engine.dialect)
    stamp = time.time()
    from datetime import UTC, datetime  # noqa: PLC0415

    when = datetime.fromtimestamp(stamp, UTC)
    batch = [(f"r{i}", "api", "m", "1", when, [{"x": k} for k in range(1 + i % 5)], [0.1] * (1 + i % 5),
              ["approve"] * (1 + i % 5), [[]] * (1 + i % 5), None) for i in range(50)]
    pauses: list[int] = []
    with engine.begin() as conn:
        done = insert.execute(conn, batch, pauses.append, chunk_rows=16)
    total = sum(1 + i % 5 for i in range(50))
    assert done == total == sum(pauses)
    assert len(pauses) >= total // 20 and all(p >= 16 for p in pauses[:-1])
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one() == total
    engine.dispose()


def test_the_standalone_shipper_leaves_its_imports_out_of_garbage_collection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m src.scoring.shipper` freezes what is alive before its loop starts: a full collection over the
    imports was a burst of several ms of CPU the workers' requests queued behind (docs/performance.md)."""
    frozen_at_run: list[int] = []
    monkeypatch.setattr(Shipper, "run", lambda self, stop, parent=None, drain_seconds=0.0:
                        frozen_at_run.append(gc.get_freeze_count()))
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # main's SIGTERM/SIGINT handlers stay out of pytest
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'log.db'}")
    monkeypatch.setenv("PREDLOG_SPOOL_DIR", str(tmp_path / "spool"))
    gc.unfreeze()
    try:
        assert shipper_module.main([]) == 0
    finally:
        gc.unfreeze()
    assert len(frozen_at_run) == 1 and frozen_at_run[0] > 10_000


def test_sqlite_checkpoints_its_log_in_small_steps(tmp_path: Path) -> None:
    """The WAL is copied into the log every WAL_CHECKPOINT_PAGES pages at a commit: ~0.4 MB at a time, not SQLite's
    default 4 MB, whose copy was the shipper's largest remaining CPU burst."""
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == WAL_CHECKPOINT_PAGES <= 200
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
