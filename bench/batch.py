"""Batch scoring: rows/s and peak memory for 1 M and 10 M rows, pandas and Dask engines, vs the raw booster.

    .venv/bin/python bench/batch.py                                  # 1 M + 10 M rows, both engines
    .venv/bin/python bench/batch.py --sizes 1000000 --reasons-rows 20000
    .venv/bin/python bench/batch.py --workdir /tmp/bench_batch --keep  # reuse the generated inputs
    .venv/bin/python bench/batch.py --sizes 10000000 --engines pandas --rounds 5  # the floor target, 5 rounds

Inputs are the current profile's real rows resampled with replacement to N rows with new
ids (bench/make_big_input.py), as Parquet with 250,000-row row groups; they are made once
per work folder and reused. Every run is the real CLI (``python -m src.batch``)
in a subprocess scoring with the registered champion (run ``dvc repro`` first). Its
memory is the peak of the summed RSS of the process and all its children (Dask's
scheduler-side client and worker processes included), sampled every 50 ms with psutil.

Two times per run: ``scoring`` is what the CLI's summary reports (read, validate,
score, write, Parquet I/O included; Dask: the cluster start is excluded), ``process``
is the whole command (interpreter and imports, model load, cluster start). The floor is
``booster.predict`` on an in-memory, already-encoded NumPy matrix (all cores), sustained over
as many rows as the largest run scores (its best single pass is printed too); the runs
compared with it pass ``--no-adverse-action``, and one run (``--adverse-rows``) measures the
CLI's default, which adds the decline and referral reason codes (a TreeSHAP pass on those
rows). One more run scores the same rows as CSV (``--csv-rows``): every column read as text and
turned into numbers per chunk. Prints Markdown tables on stdout and measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.make_big_input import base_rows, make_big_input  # noqa: E402
from src.batch.engine_pandas import default_rejects  # noqa: E402
from src.batch.run import load_job  # noqa: E402
from src.common import setup_logging  # noqa: E402
from src.config import load_settings  # noqa: E402
from src.data.schemas import normalise  # noqa: E402

log = logging.getLogger("bench.batch")

TARGET_ROWS_PER_S = 100_000
TARGET_RSS_MB = 2048
TARGET_FLOOR_SHARE = 0.85  # pandas engine, 10 M rows, median over --rounds
SAMPLE_SECONDS = 0.05


@dataclass
class Run:
    engine: str
    rows: int
    reasons: bool
    adverse: bool  # the decline / referral reason codes (TreeSHAP on those rows), the product's default
    process_s: float
    scoring_s: float
    peak_rss_mb: float
    summary: dict
    input_format: str = "parquet"

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.scoring_s

    @property
    def process_rows_per_s(self) -> float:
        return self.rows / self.process_s


def tree_rss(proc: psutil.Process) -> int:
    """RSS of a process and all its descendants, in bytes (processes that vanish count as 0)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_cli(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run the CLI, polling its process tree's RSS; return (wall seconds, peak MB)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "src.batch", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, tree_rss(ps))
        time.sleep(SAMPLE_SECONDS)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"predict exited {proc.returncode}:\n{err[-3000:]}")
    log.info("%s", out.strip())
    return wall, peak / 2**20


def ensure_input(base: pd.DataFrame, rows: int, path: Path, id_column: str | None) -> Path:
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    return make_big_input(base, rows, path, id_column, seed=rows)


def ensure_csv(parquet: Path, path: Path) -> Path:
    """The same rows as CSV, written once per work folder (one row group at a time, then renamed into place,
    so an interrupted write is never taken for a finished file)."""
    if path.exists():
        return path
    source = pq.ParquetFile(parquet)
    partial = path.with_suffix(".partial")
    with pacsv.CSVWriter(str(partial), source.schema_arrow) as writer:
        for group in range(source.num_row_groups):
            writer.write_table(source.read_row_group(group))
    partial.rename(path)
    return path


def floor(settings, input_path: Path, rows: int, contrib_rows: int, loop_rows: int) -> dict[str, float]:
    """Raw booster speed on an in-memory encoded matrix: predict and pred_contrib, in rows/s.

    Two ways to use the cores: one call with OpenMP threads (LightGBM's default), and one
    single-threaded call per core on a slice each (what the batch engines do), each the best of
    three passes over the matrix. The sliced way is also timed *sustained*: as many passes back
    to back as make ``loop_rows`` rows, timed as a whole, as the scoring loop is. On a shared
    machine a pass of a second or so can land on a fast moment that a run of many seconds cannot,
    so the loop is judged against the sustained figure.
    """
    job = load_job(settings, None, num_threads=0)
    booster, it = job.scorer.booster, job.scorer.num_iteration
    frame = pq.ParquetFile(input_path).read().to_pandas().head(rows)
    typed, _ = normalise(frame, settings.profile, with_target=False)
    matrix = job.scorer.encode_frame(typed)
    cores = os.cpu_count() or 1
    slices = np.array_split(matrix, cores)
    passes = max(1, round(loop_rows / len(matrix)))
    with ThreadPoolExecutor(cores) as pool:
        def per_core() -> None:
            list(pool.map(lambda part: booster.predict(part, num_iteration=it, num_threads=1), slices))

        openmp = min(_timed(lambda: booster.predict(matrix, num_iteration=it)) for _ in range(3))
        sliced = min(_timed(per_core) for _ in range(3))
        sustained = _timed(lambda: [per_core() for _ in range(passes)])
    contrib = _timed(lambda: booster.predict(matrix[:contrib_rows], num_iteration=it, pred_contrib=True))
    return {"rows": len(matrix), "openmp_rows_per_s": len(matrix) / openmp, "sliced_rows_per_s": len(matrix) / sliced,
            "sustained_rows_per_s": passes * len(matrix) / sustained, "sustained_rows": passes * len(matrix),
            "contrib_rows_per_s": contrib_rows / contrib, "trees": it, "cores": cores}


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench_run(input_path: Path, rows: int, engine: str, reasons: bool, workdir: Path, env: dict[str, str],
              adverse: bool = False, extra: tuple[str, ...] = ()) -> Run:
    fmt = "csv" if input_path.suffix == ".csv" else "parquet"
    tag = "_".join([engine, str(rows), *(["reasons"] if reasons else []), *(["adverse"] if adverse else []),
                    *(["csv"] if fmt == "csv" else [])])
    out = workdir / f"{tag}.parquet"
    summary_file = workdir / f"{tag}.json"
    args = [str(input_path), "--output", str(out), "--summary", str(summary_file), "--engine", engine, *extra]
    if reasons:
        args.append("--reasons")
    if not adverse:
        args.append("--no-adverse-action")
    log.info("run %s", tag)
    wall, peak = run_cli(args, env)
    summary = json.loads(summary_file.read_text())
    assert summary["rows_in"] == rows == summary["scored"] + summary["rejected"], summary
    for path in (out, Path(default_rejects(str(out)))):
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return Run(engine, rows, reasons, adverse, wall, summary["seconds"], peak, summary, fmt)


def verdict(run: Run) -> str:
    notes = []
    if run.engine == "pandas" and not run.reasons and not run.adverse:
        notes.append(f"≥ {TARGET_ROWS_PER_S:,} rows/s: {'met' if run.rows_per_s >= TARGET_ROWS_PER_S else 'NOT met'}")
    if run.rows >= 10_000_000:
        notes.append(f"≤ 2 GB: {'met' if run.peak_rss_mb <= TARGET_RSS_MB else 'NOT met'}")
    return "; ".join(notes)


def print_tables(runs: list[Run], floor_figures: dict[str, float], cpus: int) -> None:
    out = sys.stdout.write
    out(f"\n### Batch scoring ({cpus} cores, chunk_rows from params.yaml, Dask: 2 workers x 1 thread)\n\n")
    out("| engine | input | rows | reasons | decline codes | scoring s | rows/s (scoring) | process s "
        "| rows/s (process) | peak RSS MB | targets |\n|---|---|---:|:---:|:---:|---:|---:|---:|---:|---:|---|\n")
    for r in runs:
        out(f"| {r.engine} | {r.input_format} | {r.rows:,} | {'yes' if r.reasons else 'no'} "
            f"| {'yes' if r.adverse else 'no'} "
            f"| {r.scoring_s:.1f} | {r.rows_per_s:,.0f} "
            f"| {r.process_s:.1f} | {r.process_rows_per_s:,.0f} | {r.peak_rss_mb:,.0f} | {verdict(r)} |\n")
    out(f"\nFloor: `booster.predict` on an in-memory encoded matrix of {floor_figures['rows']:,} rows "
        f"({floor_figures['trees']} trees): **{floor_figures['sliced_rows_per_s']:,.0f} rows/s** with one "
        f"single-threaded call per core on a slice each (best of three passes; sustained over "
        f"{floor_figures['sustained_rows']:,} rows: {floor_figures['sustained_rows_per_s']:,.0f} rows/s), "
        f"{floor_figures['openmp_rows_per_s']:,.0f} rows/s with one "
        f"call on {floor_figures['cores']} OpenMP threads; `pred_contrib` (TreeSHAP, all cores): "
        f"{floor_figures['contrib_rows_per_s']:,.0f} rows/s.\n")
    with_reasons = {r.engine: r for r in runs if r.reasons}
    if {"pandas", "dask"} <= set(with_reasons):
        speedup = with_reasons["dask"].rows_per_s / with_reasons["pandas"].rows_per_s
        out(f"\nWith reasons, Dask (2 workers) vs pandas engine: {speedup:.2f}x "
            f"({with_reasons['dask'].rows_per_s:,.0f} vs {with_reasons['pandas'].rows_per_s:,.0f} rows/s).\n")


def print_rounds(rounds: list[tuple[dict[str, float], list[Run]]]) -> None:
    """Each round's scoring loop as a share of that round's floor, and the median share per run, which the
    target is judged on: one 10 M-row run moves by a tenth either way on this machine."""
    out = sys.stdout.write
    keys = [(r.engine, r.rows) for r in rounds[0][1]]
    out("\n### Rounds: the scoring loop (`--no-adverse-action`) as a share of the same round's sustained floor\n\n")
    out("| round | floor rows/s, best pass | floor rows/s, sustained | "
        + " | ".join(f"{engine} {rows:,} (share of sustained / of best)" for engine, rows in keys) + " |\n")
    out("|---:|---:|---:|" + "---:|" * len(keys) + "\n")
    shares: dict[tuple[str, int], list[float]] = {key: [] for key in keys}
    for number, (figures, loop) in enumerate(rounds, 1):
        cells = []
        for run in loop:
            share = run.rows_per_s / figures["sustained_rows_per_s"]
            shares[(run.engine, run.rows)].append(share)
            cells.append(f"{run.rows_per_s:,.0f} ({share:.0%} / {run.rows_per_s / figures['sliced_rows_per_s']:.0%})")
        out(f"| {number} | {figures['sliced_rows_per_s']:,.0f} | {figures['sustained_rows_per_s']:,.0f} | "
            + " | ".join(cells) + " |\n")
    for (engine, rows), values in shares.items():
        median = float(np.median(values))
        target = f"; ≥ {TARGET_FLOOR_SHARE:.0%}: {'met' if median >= TARGET_FLOOR_SHARE else 'NOT met'}" \
            if engine == "pandas" and rows >= 10_000_000 else ""
        out(f"\n{engine}, {rows:,} rows: median {median:.1%} of the sustained floor (from {min(values):.0%} to "
            f"{max(values):.0%}){target}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--reasons-rows", type=int, default=100_000, help="input size of the --reasons runs")
    parser.add_argument("--adverse-rows", type=int, default=1_000_000,
                        help="input size of the run with the decline / referral reason codes (the CLI's default; "
                             "the other runs pass --no-adverse-action, the scoring loop the floor is about)")
    parser.add_argument("--engines", nargs="+", default=["pandas", "dask"], choices=["pandas", "dask"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_batch"))
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs in --workdir")
    parser.add_argument("--csv-rows", type=int, default=1_000_000,
                        help="input size of the run that reads CSV instead of Parquet (pandas engine; 0: none)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure the floor and the --sizes runs this many times over and print each run's "
                             "median share of its round's floor (the 10 M-row target is judged on it)")
    parser.add_argument("--chunk-rows", type=int, help="pandas engine runs: the CLI's --chunk-rows (default: "
                                                       "batch.chunk_rows of params.yaml), to try other chunk sizes")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    settings = load_settings(ROOT / "params.yaml")
    args.workdir.mkdir(parents=True, exist_ok=True)
    base = base_rows(settings)
    id_column = settings.profile.id_column
    sizes = {*args.sizes, args.reasons_rows, args.adverse_rows, *([args.csv_rows] if args.csv_rows else [])}
    inputs = {n: ensure_input(base, n, args.workdir / f"input_{n}.parquet", id_column) for n in sorted(sizes)}
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)

    rounds: list[tuple[dict[str, float], list[Run]]] = []
    for number in range(1, args.rounds + 1):  # the floor first in every round, then the scoring loop
        log.info("round %d of %d", number, args.rounds)
        floor_figures = floor(settings, inputs[min(args.sizes)], min(*args.sizes, 1000000), 10_000, max(args.sizes))
        loop = []
        for n in sorted(args.sizes):
            for engine in args.engines:
                extra = ("--chunk-rows", str(args.chunk_rows)) if args.chunk_rows and engine == "pandas" else ()
                loop.append(bench_run(inputs[n], n, engine, False, args.workdir, env, extra=extra))
        rounds.append((floor_figures, loop))
    floor_figures, runs = rounds[0][0], list(rounds[0][1])  # the first round, then the other runs
    if args.csv_rows:
        csv = ensure_csv(inputs[args.csv_rows], args.workdir / f"input_{args.csv_rows}.csv")
        runs.append(bench_run(csv, args.csv_rows, "pandas", False, args.workdir, env))
    runs.append(bench_run(inputs[args.adverse_rows], args.adverse_rows, "pandas", False, args.workdir, env, True))
    for engine in args.engines:
        runs.append(bench_run(inputs[args.reasons_rows], args.reasons_rows, engine, True, args.workdir, env, True))
    print_tables(runs, floor_figures, os.cpu_count() or 1)
    if len(rounds) > 1:
        print_rounds(rounds)
    if not args.keep:
        for path in inputs.values():
            path.unlink(missing_ok=True)
            path.with_suffix(".csv").unlink(missing_ok=True)


if __name__ == "__main__":
    setup_logging()
    np.seterr(all="ignore")
    main()
