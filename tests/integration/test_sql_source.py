"""A profile whose source is a database table joined with a file, on a real PostgreSQL server.

The ``taiwan_db`` demo profile: the real UCI Taiwan file split as a lender keeps it (applicant
profiles in a PostgreSQL table, payment history in a CSV), snapshotted and joined on ID,
must give the very raw table, split and model ``taiwan_credit`` gives from the single file.
Every way it can go wrong is one clear error naming the variable, URL, table or keys.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from src.common import PipelineError
from src.config import Settings, env
from src.data import demo_db, ingest, snapshot, split, validate
from src.modeling import train
from tests.conftest import make_settings, real_file
from tests.net import free_port

SAMPLE = {"sample_rows": 4000}  # a real sample: quick to train, the same rows for both profiles


def project(root: Path, dataset: str) -> Settings:
    settings = make_settings(dataset, root, ingest=SAMPLE)
    source = real_file("taiwan_credit")
    external = root / "data" / "external" / "taiwan_credit"
    external.mkdir(parents=True, exist_ok=True)
    if not (external / source.name).exists():
        (external / source.name).symlink_to(source)
    return settings


@pytest.fixture
def demo(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The demo loaded into a fresh PostgreSQL database ($TAIWAN_DB_URL) and snapshotted."""
    monkeypatch.setenv("TAIWAN_DB_URL", postgres_url)
    settings = project(tmp_path, "taiwan_db")
    rows, csv = demo_db.load(project(tmp_path, "taiwan_credit"), settings, postgres_url)
    assert rows == 30000 and csv == settings.external_dir / "payments.csv"
    snapshot.run(settings)
    return settings


def test_the_database_profile_reaches_the_same_data_and_model_as_the_file(demo: Settings, tmp_path: Path) -> None:
    plain = project(tmp_path / "plain", "taiwan_credit")
    for settings in (demo, plain):
        for stage in (ingest, validate, split, train):
            stage.run(settings)
    assert demo.raw_table.read_bytes() == plain.raw_table.read_bytes()
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(demo.split_table(name)), pd.read_parquet(plain.split_table(name)))
    meta_db, meta_file = (json.loads(s.model_meta_file.read_text()) for s in (demo, plain))
    for key in ("threshold", "validation", "features", "best_iteration"):
        assert meta_db.get(key) == meta_file.get(key), key
    test = pd.read_parquet(plain.split_table("test"))
    models = [joblib.load(s.model_file) for s in (demo, plain)]
    probabilities = [m.predict_proba(test[meta_file["features"]])[:, 1] for m in models]
    np.testing.assert_array_equal(probabilities[0], probabilities[1])


def test_a_snapshot_changes_only_when_the_table_does(demo: Settings, postgres_url: str) -> None:
    path = demo.external_dir / "applicants.parquet"
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    snapshot.run(demo)
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime  # unchanged: not rewritten
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text('UPDATE applicants SET "LIMIT_BAL" = "LIMIT_BAL" + 10000 WHERE "ID" = 7'))
    engine.dispose()
    snapshot.run(demo)
    changed = pd.read_parquet(path)
    assert path.read_bytes() != before
    old = pd.read_parquet(io.BytesIO(before))
    assert changed.loc[changed["ID"] == 7, "LIMIT_BAL"].item() == old.loc[old["ID"] == 7, "LIMIT_BAL"].item() + 10000
    assert changed["ID"].is_monotonic_increasing  # key order, whatever order the database returns


def test_every_way_the_source_can_fail_is_one_line_naming_it(demo: Settings, postgres_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAIWAN_DB_URL")
    with pytest.raises(PipelineError, match=r"set \$TAIWAN_DB_URL to the SQLAlchemy URL"):
        snapshot.run(demo)

    wrong = sa.make_url(postgres_url).set(port=free_port(), password="s3cret-pass")
    monkeypatch.setenv("TAIWAN_DB_URL", wrong.render_as_string(hide_password=False))
    with pytest.raises(PipelineError) as info:
        snapshot.run(demo)
    message = str(info.value)
    assert message.startswith(f"cannot read from {env.safe_url(wrong.render_as_string(False))} ($TAIWAN_DB_URL)")
    assert "s3cret-pass" not in message and "\n" not in message

    monkeypatch.setenv("TAIWAN_DB_URL", "postgresql+nosuchdriver://x@127.0.0.1/db")
    with pytest.raises(PipelineError, match=r"\$TAIWAN_DB_URL is not a usable SQLAlchemy URL"):
        snapshot.run(demo)

    monkeypatch.setenv("TAIWAN_DB_URL", postgres_url)
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE applicants RENAME TO applicants_old"))
    engine.dispose()
    with pytest.raises(PipelineError, match=r"table 'applicants' not found in postgresql"):
        snapshot.run(demo)

    payments = demo.external_dir / "payments.csv"
    frame = pd.read_csv(payments)
    frame[~frame["ID"].isin([5, 17, 29999])].to_csv(payments, index=False)
    with pytest.raises(PipelineError) as info:
        ingest.run(demo)
    assert str(info.value) == ("joining applicants.parquet and payments.csv on ID would lose rows: 3 ID(s) in "
                               "applicants.parquet but not payments.csv, e.g. 5, 17, 29999")
