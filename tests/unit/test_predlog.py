"""The prediction log: the spool every answered decision is written to first, the shipper that copies it to
the database exactly once (whatever is killed, whatever the database does), and the pre-bound INSERT."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from src.config.env import default_spool_dir, safe_url
from src.scoring import spool as spool_module
from src.scoring.logdb import COLUMNS, FastInsert, create_tables, make_engine, predictions, transient
from src.scoring.predlog import PredictionLog, new_request_id
from src.scoring.shipper import REJECTED, Shipper
from src.scoring.spool import SUFFIX, SpoolWriter, encode


def scored(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = [{"x": i, "label": f"row {i}"} for i in range(n)]
    return rows, [{"probability_of_default": i / 10, "decision": "approve"} for i in range(n)]


def record(request_id: str, n: int = 1) -> bytes:
    return encode(request_id, time.time(), "api", "m", "1", *scored(n))


def logged_ids(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        create_tables(engine)  # (the shipper makes them on its first pass: maybe not yet)
        with engine.connect() as conn:
            return list(conn.execute(sa.select(predictions.c.request_id).order_by(predictions.c.id)).scalars())
    finally:
        engine.dispose()


def test_concurrent_submissions_are_all_written_by_close(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = PredictionLog(url)
    expected = 0
    lock = threading.Lock()

    def client(index: int) -> None:
        nonlocal expected
        for i in range(60):
            n = 1 + (i + index) % 3
            log.submit(f"{index}-{i}", "api", "model", "7", *scored(n))
            with lock:
                expected += n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()  # returns only once everything spooled is shipped
    again = PredictionLog(url)  # a fresh engine: the rows are in the file, not just in a cache
    try:
        assert again.count() == expected == 8 * sum(1 + i % 3 for i in range(60))
        assert not list(again.spool_dir.glob(f"*{SUFFIX}"))  # finished segments are deleted once shipped
    finally:
        again.close()


def test_a_killed_writer_loses_no_answered_row(tmp_path: Path) -> None:
    """A process SIGKILLed right after answering: every record it wrote is shipped; the half-written record it
    was killed in (never answered) is set aside, not shipped as garbage and not lost."""
    url, spool = f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spool"
    pid = os.fork()
    if pid == 0:  # the worker: answers 25 requests, starts a 26th record, and is killed mid-write
        try:
            writer = SpoolWriter(spool, fsync_seconds=0)
            for i in range(25):
                writer.append(record(f"answered-{i}", 2))
            os.write(writer._fd, record("never-answered", 2)[:40])
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    shipper = Shipper(url, spool)
    assert shipper.ship_once() == 50
    assert logged_ids(url) == [f"answered-{i}" for i in range(25) for _ in range(2)]
    assert not list(spool.glob(f"*{SUFFIX}"))  # the dead writer's segment is finished, shipped, deleted
    (aside,) = (spool / REJECTED).iterdir()
    kept = orjson.loads(aside.read_bytes())
    assert "unfinished record" in kept["error"] and kept["record"].startswith('["never-answered"')


def test_a_database_outage_loses_nothing_and_ships_each_row_once(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    url, spool = f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spool"
    writer = SpoolWriter(spool)
    shipper = Shipper(url, spool)
    real_insert = shipper._insert
    down = {"on": True}

    def insert(*args: Any) -> int:
        if down["on"]:
            raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return real_insert(*args)

    monkeypatch.setattr(shipper, "_insert", insert)
    for i in range(10):
        writer.append(record(f"r{i}"))
    for _ in range(3):
        with pytest.raises(sa.exc.OperationalError):
            shipper.ship_once()
    assert shipper.backlog() > 0 and logged_ids(url) == []
    down["on"] = False
    assert shipper.ship_once() == 10
    assert shipper.backlog() == 0
    writer.append(record("r10"))
    shipper.release()  # the shipper process exits (its lock goes with it)
    restarted = Shipper(url, spool)  # a new shipper process reads where the database says it stopped
    assert restarted.ship_once() == 1
    assert logged_ids(url) == [f"r{i}" for i in range(11)]  # each exactly once, in order
    writer.close()
    assert restarted.ship_once() == 0 and not list(spool.glob(f"*{SUFFIX}"))


def test_a_record_the_database_refuses_is_set_aside_and_the_rest_shipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    url, spool = f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spool"
    writer = SpoolWriter(spool)
    for name in ("good-1", "bad", "good-2"):
        writer.append(record(name, 2))
    writer.append(b'["not a whole record"\n')  # a corrupt line: set aside as well
    shipper = Shipper(url, spool)
    real_execute = FastInsert.execute

    def refuse_bad(self: FastInsert, conn: sa.Connection, batch: Any, *pacing: Any) -> int:
        if any(entry[0] == "bad" for entry in batch):
            raise sa.exc.IntegrityError("INSERT", {}, Exception("value too long for type character varying"))
        return real_execute(self, conn, batch, *pacing)

    monkeypatch.setattr(FastInsert, "execute", refuse_bad)
    with caplog.at_level("WARNING", logger="src.scoring.shipper"):
        assert shipper.ship_once() == 4
    assert logged_ids(url) == ["good-1", "good-1", "good-2", "good-2"]
    assert "retry" not in caplog.text.lower()  # not retried: it would fail the same way every time
    (aside,) = (spool / REJECTED).iterdir()
    corrupt, refused = (orjson.loads(line) for line in aside.read_bytes().splitlines())
    assert corrupt["record"] == '["not a whole record"' and "JSONDecodeError" in corrupt["error"]
    assert refused["record"].startswith('["bad",') and "IntegrityError" in refused["error"]
    assert shipper.metrics.rejected._value.get() == 2
    assert shipper.ship_once() == 0  # the offsets moved past both: nothing is shipped or set aside twice


def test_a_short_write_takes_its_fragment_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk mid-record: the caller gets an error, and the segment holds no half line."""
    writer = SpoolWriter(tmp_path / "spool")
    writer.append(record("first"))
    real_write = os.write
    monkeypatch.setattr(spool_module.os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(OSError, match="disk full"):
        writer.append(record("second"))
    monkeypatch.setattr(spool_module.os, "write", real_write)
    writer.append(record("third"))
    assert writer.segment is not None
    lines = writer.segment.read_bytes().splitlines()
    assert [orjson.loads(line)[0] for line in lines] == ["first", "third"]


def test_segments_rotate_and_each_is_deleted_once_shipped(tmp_path: Path) -> None:
    url, spool = f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spool"
    writer = SpoolWriter(spool, segment_bytes=400)
    shipper = Shipper(url, spool)
    for i in range(12):
        writer.append(record(f"r{i}"))
    assert len(list(spool.glob(f"*{SUFFIX}"))) >= 3
    assert shipper.ship_once() == 12
    assert len(list(spool.glob(f"*{SUFFIX}"))) <= 1  # only the one still open is kept
    assert logged_ids(url) == [f"r{i}" for i in range(12)]


def test_one_shipper_per_spool(tmp_path: Path) -> None:
    url, spool = f"sqlite:///{tmp_path / 'log.db'}", tmp_path / "spool"
    first, second = Shipper(url, spool), Shipper(url, spool)
    assert first.acquire() and not second.acquire()
    SpoolWriter(spool).append(record("r"))
    assert second.ship_once() == 0  # stands by
    first.release()
    assert second.ship_once() == 1


def test_the_shipping_thread_ships_without_being_asked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = PredictionLog(url, ship_seconds=0.01)
    log.submit("parent", "api", "m", "1", *scored(1))
    deadline = time.monotonic() + 10
    while logged_ids(url) != ["parent"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert logged_ids(url) == ["parent"]  # nobody called flush: the thread shipped it
    log.close()


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:////var/app/predictions.db", "/var/app/predictions.db.spool"),
    ("sqlite:///logs/p.db", "ROOT/logs/p.db.spool"),
    ("postgresql://u:p@db/log", "ROOT/spool/"),
])
def test_each_database_has_its_own_spool_by_default(url: str, expected: str) -> None:
    got = str(default_spool_dir(url, Path("/project")))
    assert got.startswith(expected.replace("ROOT", "/project"))
    assert default_spool_dir("postgresql://u:p@db/other", Path("/project")) != default_spool_dir(
        "postgresql://u:p@db/log", Path("/project"))


def test_request_ids_are_time_ordered_version_7_uuids_and_a_fork_never_repeats_them() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(3000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the first 48 bits: milliseconds since 1970
    time.sleep(0.002)
    assert new_request_id() > max(ids)  # a later millisecond sorts after every earlier id
    randomness = {uuid.UUID(i).int & ((1 << 62) - 1) for i in ids}
    assert len(randomness) == len(ids)  # the random tail differs even within one millisecond
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids must not be the ones the parent's buffer holds next
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    parent_next = new_request_id()
    assert uuid.UUID(child).version == 7 and child[14:] != parent_next[14:] and child not in ids



@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://scorer:s3cr%40t@db.internal:5432/log", "postgresql://scorer:***@db.internal:5432/log"),
    ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:***@h/db"),
    ("sqlite:////var/app/predictions.db", "sqlite:////var/app/predictions.db"),
])
def test_database_urls_are_shown_with_the_password_masked(url: str, shown: str) -> None:
    assert safe_url(url) == shown


def test_transient_and_permanent_database_errors() -> None:
    assert transient(OSError("database is locked"))
    assert transient(sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection")))
    assert not transient(sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not transient(TypeError("Type is not JSON serializable: object"))


def test_logged_rows_read_back_as_sqlalchemy_wrote_them(tmp_path: Path) -> None:
    """Rows bound by FastInsert read back through the Table's types: datetimes, JSON features, floats."""
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}")
    rows = [{"age": 30, "education": 2, "limit_bal": 1000.5, "note": None}, {"age": 41, "education": 1,
                                                                              "limit_bal": 2.0, "note": "é"}]
    results = [{"probability_of_default": 0.125, "decision": "approve"},
               {"probability_of_default": 0.75, "decision": "decline"}]
    before = datetime.now(UTC)
    log.submit("req-a", "api", "model-x", "3", rows, results)
    log.submit("req-b", "form", "model-x", "3", rows[:1], results[:1])
    assert log.flush(10)
    with log.engine.connect() as conn:
        got = conn.execute(sa.select(predictions).order_by(predictions.c.id)).mappings().all()
    log.close()
    assert [(r["request_id"], r["row_index"], r["source"]) for r in got] == [("req-a", 0, "api"), ("req-a", 1, "api"),
                                                                            ("req-b", 0, "form")]
    assert [r["features"] for r in got] == [rows[0], rows[1], rows[0]]
    assert [(r["probability"], r["decision"]) for r in got] == [(0.125, "approve"), (0.75, "decline"),
                                                                (0.125, "approve")]
    assert all(r["model_name"] == "model-x" and r["model_version"] == "3" for r in got)
    stamps = [r["created_at"].replace(tzinfo=UTC) for r in got]
    assert all(before - timedelta(seconds=1) <= t <= datetime.now(UTC) for t in stamps)
    assert stamps[0] == stamps[1]  # one timestamp per request


def test_insert_for_a_named_paramstyle_dialect_binds_dicts() -> None:
    """PostgreSQL (pyformat) gets %(name)s placeholders and one dict per row, JSON serialised by the dialect."""
    dialect = postgresql.psycopg2.dialect()
    insert = FastInsert(dialect)
    assert "%(request_id)s" in insert.sql and not insert.positional
    stamp = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    params = insert.parameters([("r", "api", "m", "1", stamp, [{"a": 1}, {"a": 2}], [0.5, 0.5], ["refer"] * 2,
                                 [["TC03"], None], "key:0123456789ab")])
    assert [p["row_index"] for p in params] == [0, 1]
    assert [p["requested_by"] for p in params] == ["key:0123456789ab"] * 2
    assert all(set(p) == set(COLUMNS) and p["created_at"] == stamp and p["decision"] == "refer" for p in params)
    assert [p["features"] for p in params] in ([{"a": 1}, {"a": 2}], ['{"a":1}', '{"a":2}'], ['{"a": 1}', '{"a": 2}'])
    assert params[0]["adverse_action"] in (["TC03"], '["TC03"]') and params[1]["adverse_action"] is None


def test_sqlite_insert_binds_positional_tuples_in_placeholder_order() -> None:
    insert = FastInsert(make_engine("sqlite://").dialect)  # the engine's JSON serializer: orjson
    assert insert.positional and insert.sql.count("?") == len(COLUMNS)
    (row,) = insert.parameters([("r", "api", "m", "1", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), [{"a": 1}],
                                 [0.5], ["refer"], [["TC03", "TC01"]], None)])
    named = dict(zip(insert.order, row, strict=True))
    assert named["requested_by"] is None
    assert named["created_at"].startswith("2026-01-02 03:04:05") and named["features"] == '{"a":1}'
    assert named["adverse_action"] == '["TC03","TC01"]'



def test_a_log_made_by_an_earlier_version_gains_the_reason_codes_and_requester_columns(tmp_path: Path) -> None:
    """An existing predictions table without adverse_action and requested_by: the columns are added, old rows
    read them as null, and lines spooled by earlier versions (eight fields: no codes; nine: no requester) still
    ship."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    old = sa.MetaData()
    sa.Table("predictions", old, *[sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                                   for c in predictions.columns if c.name not in ("adverse_action", "requested_by")])
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(old.tables["predictions"].insert(), {
            "request_id": "old", "row_index": 0, "created_at": datetime(2026, 1, 1, tzinfo=UTC), "source": "api",
            "model_name": "m", "model_version": "1", "features": {"a": 1}, "probability": 0.9,
            "decision": "decline"})
    create_tables(engine)
    create_tables(engine)  # twice: nothing left to add
    assert {"adverse_action", "requested_by"} <= {c["name"] for c in sa.inspect(engine).get_columns("predictions")}
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    eight_fields = orjson.dumps(["r-old-line", time.time(), "api", "m", "1", [{"a": 2}], [0.8], ["decline"]])
    nine_fields = orjson.dumps(["r-nine", time.time(), "api", "m", "1", [{"a": 4}], [0.8], ["decline"], [["TC02"]]])
    new_line = encode("r-new", time.time(), "api", "m", "1", [{"a": 3}],
                      [{"probability_of_default": 0.7, "decision": "refer",
                        "adverse_action": [{"code": "TC03"}, {"code": "TC01"}]}], "key:0123456789ab")
    (spool_dir / f"host-1-1{SUFFIX}").write_bytes(b"\n".join([eight_fields, nine_fields, new_line]) + b"\n")
    shipper = Shipper(url, spool_dir, engine=engine)
    shipper.ship_once()
    with engine.connect() as conn:
        got = {r[0]: tuple(r[1:]) for r in conn.execute(sa.select(
            predictions.c.request_id, predictions.c.adverse_action, predictions.c.requested_by)).all()}
    assert got == {"old": (None, None), "r-old-line": (None, None), "r-nine": (["TC02"], None),
                   "r-new": (["TC03", "TC01"], "key:0123456789ab")}
    engine.dispose()
