"""``python -m src.data.snapshot``: copy a profile's SQL source (a table or a query) into its raw file.

Lenders keep applicant profiles in a database. A pipeline that read the database itself
would not be reproducible (DVC cannot hash a live table), so this step copies the table or
query named by ``source.sql`` into ``data/external/<dataset>/<source.file>`` (Parquet, rows in
key order, written only when its content changed): the ingest stage reads that file, DVC
hashes it, and a rerun on an unchanged database changes nothing. Like ``dvc update`` for an
import, it is run when fresh data is wanted (``make snapshot``; the retrain flow runs it).

The URL comes from the environment variable ``source.sql.url_env`` (it holds a password).
A wrong URL, an unreachable server or a missing table is one line naming it.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

from src.common import PipelineError, run_main
from src.config import Settings, env, load_settings
from src.config.profile import SqlSource

log = logging.getLogger(__name__)


def read_sql_source(spec: SqlSource, url: str) -> pd.DataFrame:
    """The table or query's rows (every column as the database types it); errors name the URL and table."""
    where = env.safe_url(url)
    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as exc:
        raise PipelineError(f"${spec.url_env} is not a usable SQLAlchemy URL ({where}): {_first_line(exc)}") from None
    try:
        with engine.connect() as conn:
            if spec.table is not None:
                if not sa.inspect(conn).has_table(spec.table):
                    raise PipelineError(f"table '{spec.table}' not found in {where} (${spec.url_env})")
                return pd.read_sql_table(spec.table, conn)
            return pd.read_sql_query(sa.text(spec.query), conn)
    except sa.exc.OperationalError as exc:
        raise PipelineError(f"cannot read from {where} (${spec.url_env}): {_first_line(exc.orig or exc)}") from None
    except sa.exc.DBAPIError as exc:  # the query itself failed (a wrong column, a syntax error)
        raise PipelineError(f"the query of source.sql failed on {where}: {_first_line(exc.orig or exc)}") from None
    finally:
        engine.dispose()


def key_order(frame: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Rows in the order of the join key (else the id column), so the snapshot does not depend on the order
    the database happened to return them in."""
    source = settings.profile.source
    raw_names = {v: k for k, v in settings.profile.rename.items()}
    key = source.join.on if source.join else raw_names.get(settings.profile.id_column or "")
    if key is None or key not in frame.columns:
        return frame.reset_index(drop=True)
    return frame.sort_values(key, kind="stable").reset_index(drop=True)


def write_if_changed(frame: pd.DataFrame, path: Path) -> bool:
    """Write the Parquet file unless the same bytes are already there (DVC and mtimes see no change)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    data = buffer.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def run(settings: Settings) -> Path:
    """Snapshot the active profile's SQL source into its raw file; the file's path."""
    source = settings.profile.source
    if source.sql is None:
        raise PipelineError(f"profile '{settings.dataset}' has no source.sql: its raw file is {source.file}, "
                            "put there by hand or by `make data`")
    url = env.text(source.sql.url_env)
    if not url:
        raise PipelineError(f"set ${source.sql.url_env} to the SQLAlchemy URL of the database holding "
                            f"{source.sql.table or 'the query of source.sql'} (profile '{settings.dataset}')")
    frame = key_order(read_sql_source(source.sql, url), settings)
    path = settings.external_dir / source.file
    changed = write_if_changed(frame, path)
    log.info("%s %d rows x %d columns of %s from %s", "wrote" if changed else "unchanged:", len(frame),
             frame.shape[1], source.sql.table or "the query", env.safe_url(url))
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    run(load_settings(args.params))


if __name__ == "__main__":
    run_main(main)
