"""Big batch-scoring inputs from a real dataset: resampled with replacement, new ids, streamed to Parquet.

    .venv/bin/python bench/make_big_input.py --rows 10000000 --out /tmp/batch_10m.parquet
    .venv/bin/python bench/make_big_input.py --rows 1000000 --out /tmp/batch_1m.parquet --dataset credit_risk

The profile's raw file is read through the pipeline's own ingest (data/external/<dataset>/,
as `make data` links it), so the columns and values are real; rows are drawn with
replacement (seeded), ids are renumbered 0..N-1, the target column is dropped (a batch
to score has no outcome yet). Row groups are generated and written one at a time, so
10 M rows need no more memory than one row group.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src.common import setup_logging  # noqa: E402
from src.config import Settings, load_settings  # noqa: E402
from src.data.ingest import ingest, locate_raw_file, read_raw  # noqa: E402

log = logging.getLogger("bench.make_big_input")

ROW_GROUP_ROWS = 250_000


def base_rows(settings: Settings) -> pd.DataFrame:
    """The profile's real rows, as ingest makes them (snake_case names), without the target."""
    path, fmt, options = locate_raw_file(settings)
    table = ingest(read_raw(path, fmt, options), settings.profile, source=str(path))
    return table.drop(columns=[settings.profile.target_column])


def make_big_input(base: pd.DataFrame, rows: int, dest: Path, id_column: str | None, seed: int = 0,
                   row_group_rows: int = ROW_GROUP_ROWS) -> Path:
    """Write ``rows`` rows drawn with replacement from ``base`` to ``dest``, one row group at a time."""
    rng = np.random.default_rng(seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.Schema.from_pandas(base, preserve_index=False)
    started = time.perf_counter()
    with pq.ParquetWriter(dest, schema, compression="snappy") as writer:
        for start in range(0, rows, row_group_rows):
            n = min(row_group_rows, rows - start)
            chunk = base.iloc[rng.integers(0, len(base), n)].reset_index(drop=True)
            if id_column and id_column in chunk:
                chunk[id_column] = np.arange(start, start + n, dtype=chunk[id_column].dtype)
            writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
    log.info("wrote %s rows to %s (%.0f MB) in %.1f s", f"{rows:,}", dest, dest.stat().st_size / 1e6,
             time.perf_counter() - started)
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dataset", help="profile (default: params.yaml dataset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--row-group-rows", type=int, default=ROW_GROUP_ROWS)
    args = parser.parse_args(argv)
    settings = load_settings(ROOT / "params.yaml", dataset=args.dataset or None)
    make_big_input(base_rows(settings), args.rows, args.out, settings.profile.id_column, args.seed,
                   args.row_group_rows)


if __name__ == "__main__":
    setup_logging()
    main()
