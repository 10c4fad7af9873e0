"""``python -m src.data.demo_db`` (``make demo-db``): the UCI Taiwan file kept as a lender keeps it, for the
``taiwan_db`` profile.

The applicant profiles (limit, sex, education, marriage, age and the outcome) go into a table
``applicants`` of the database at ``$TAIWAN_DB_URL`` (PostgreSQL, or any SQLAlchemy URL;
``make demo-db`` defaults to a SQLite file), and the six months of payment history into
``data/external/taiwan_db/payments.csv``. Then the profile's source is snapshotted
(src/data/snapshot.py): the pipeline joins the two on ID and reaches the very model
``taiwan_credit`` reaches from the single file (tests/integration/test_sql_source.py).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from src.common import PipelineError, run_main
from src.config import Settings, env, load_settings
from src.data import snapshot
from src.data.ingest import locate_raw_file, read_raw

log = logging.getLogger(__name__)

DEMO_PROFILE, SOURCE_PROFILE = "taiwan_db", "taiwan_credit"
KEY = "ID"
PAYMENT_PREFIXES = ("PAY_", "BILL_AMT", "PAY_AMT")  # the payment history: a file of its own


def split_columns(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(applicant profiles with the outcome, payment history), both keyed by ID."""
    payments = [c for c in raw.columns if c.startswith(PAYMENT_PREFIXES)]
    if KEY not in raw.columns or not payments:
        raise PipelineError(f"the {SOURCE_PROFILE} file has no {KEY} column or no payment history columns")
    return raw[[c for c in raw.columns if c not in payments]], raw[[KEY, *payments]]


def load(source: Settings, demo: Settings, url: str) -> tuple[int, Path]:
    """Write the applicants table at ``url`` and the payments CSV; (rows, the CSV's path)."""
    path, fmt, options = locate_raw_file(source)
    applicants, payments = split_columns(read_raw(path, fmt, options))
    table = demo.profile.source.sql.table if demo.profile.source.sql else None
    join = demo.profile.source.join
    if table is None or join is None:
        raise PipelineError(f"profile '{demo.dataset}' needs source.sql.table and source.join")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            applicants.to_sql(table, conn, if_exists="replace", index=False, chunksize=5_000)
    except sa.exc.OperationalError as exc:
        raise PipelineError(f"cannot write the demo table to {env.safe_url(url)}: "
                            f"{str(exc.orig or exc).splitlines()[0]}") from None
    finally:
        engine.dispose()
    csv = demo.external_dir / join.file
    csv.parent.mkdir(parents=True, exist_ok=True)
    payments.to_csv(csv, index=False)
    log.info("loaded %d applicants into %s at %s and their payment history into %s", len(applicants), table,
             env.safe_url(url), csv)
    return len(applicants), csv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    demo = load_settings(args.params, dataset=DEMO_PROFILE)
    sql = demo.profile.source.sql
    url = env.text(sql.url_env) if sql else None
    if not url:
        raise PipelineError(f"set ${sql.url_env if sql else 'TAIWAN_DB_URL'} to a SQLAlchemy URL "
                            "(make demo-db uses a SQLite file by default)")
    load(load_settings(args.params, dataset=SOURCE_PROFILE), demo, url)
    snapshot.run(demo)


if __name__ == "__main__":
    run_main(main)
