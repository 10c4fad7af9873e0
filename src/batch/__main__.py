"""Batch scoring CLI: a CSV/Parquet file or folder (local or ``s3://``) -> scored Parquet + rejects + summary.

    python -m src.batch INPUT --output scored.parquet [--reasons] [--include-features]
        [--model-uri URI] [--profile NAME] [--rejects FILE] [--summary FILE.json]
        [--engine pandas|dask] [--scheduler tcp://host:8786]

Bad input (a missing column, an unreadable file, a model for another profile) is one
line naming it and exit code 2, never a traceback. The outputs appear only once whole
(src/batch/run.py): a failed or interrupted run leaves none of its rows behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from src import notify
from src.batch.inputs import InputError
from src.batch.run import load_job, rejects_event, score_batch, stable_summary
from src.common import PipelineError, setup_logging, write_json
from src.config import ConfigError, load_settings

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # as a shell reports a process stopped by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.batch",
                                     description="Score a CSV/Parquet file or folder (local or s3://) in batch.")
    parser.add_argument("input", help="CSV or Parquet file, or a folder of them; local path or s3:// URL")
    parser.add_argument("--output", required=True, help="scored Parquet file (a folder of parts with --engine dask)")
    parser.add_argument("--rejects", help="rejected rows with reasons (default: <output stem>.rejects.parquet)")
    parser.add_argument("--summary", help="also write the run's counts as JSON here")
    parser.add_argument("--model-uri", help="models:/ URI or exported model folder (default: the profile's "
                                            "champion, as the service resolves it)")
    parser.add_argument("--profile", help="dataset profile (default: params.yaml `dataset`)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--reasons", action="store_true", help="add the top reasons per row (TreeSHAP; slower)")
    parser.add_argument("--top-reasons", type=int, help="reasons per row (default: serve.top_reasons); "
                                                        "implies --reasons")
    parser.add_argument("--no-adverse-action", action="store_true",
                        help="leave out the principal reason codes of declines and referrals (their TreeSHAP "
                             "pass): only for re-scoring where nobody is decided, e.g. a backtest")
    parser.add_argument("--reproducible", action="store_true",
                        help="leave out what differs between runs of one model on one input (scored_at and "
                             "model_version columns; times and the version number in the summary): for DVC outputs")
    parser.add_argument("--include-features", action="store_true",
                        help="also write the validated feature columns (what the drift monitor reads)")
    parser.add_argument("--engine", choices=("pandas", "dask"), default="pandas")
    parser.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786); implies --engine dask")
    parser.add_argument("--chunk-rows", type=int, help="rows per chunk, pandas engine (default: batch.chunk_rows)")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings(args.params, dataset=args.profile)
    batch = settings.batch
    engine = "dask" if args.scheduler else args.engine
    top = 0
    if args.reasons or args.top_reasons is not None:
        top = settings.serve.top_reasons if args.top_reasons is None else args.top_reasons
        if top < 1:
            raise InputError(f"--top-reasons must be at least 1, got {top}")
    if args.chunk_rows is not None and args.chunk_rows < 1:
        raise InputError(f"--chunk-rows must be at least 1, got {args.chunk_rows}")
    # The cluster first: loading an MLflow model puts the model's bundled copy of `src` first on
    # sys.path, and worker processes spawned after that would import it instead of this checkout.
    client = None
    if engine == "dask":
        from src.batch.engine_dask import dask_client  # noqa: PLC0415  (Dask only when asked for)

        client = dask_client(batch, args.scheduler)
    try:
        # One LightGBM thread per call: the pandas engine's thread pool / Dask's workers spread the chunks.
        job = load_job(settings, args.model_uri, top_reasons=top, include_features=args.include_features,
                       reproducible=args.reproducible, adverse_action=not args.no_adverse_action)
        summary = score_batch(args.input, args.output, job, batch, rejects=args.rejects, engine=engine,
                              client=client, chunk_rows=args.chunk_rows)
    finally:
        if client is not None:
            cluster = client.cluster if not args.scheduler else None
            client.close()
            if cluster is not None:
                cluster.close()
    if args.summary:
        write_summary(args.summary, stable_summary(summary) if args.reproducible else summary)
    if summary["reject_share"] > settings.notify.batch_reject_share:
        notify.send(rejects_event(summary, settings), settings.notify)
    return summary


def write_summary(url: str, summary: dict[str, Any]) -> None:
    """The run's counts as JSON (a local path, e.g. metrics/score_summary.json for DVC, or s3://)."""
    fs, path = fsspec.core.url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        write_json(Path(path), summary)
        return
    with fsspec.open(url, "w") as fh:
        fh.write(json.dumps(summary, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Parse, score, print the counts; bad input is one line and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (InputError, ConfigError) as exc:
        log.error("%s", exc)
        sys.exit(EXIT_BAD_INPUT)
    except PipelineError as exc:
        log.error("%s", exc)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        log.error("interrupted: %s was not written (a result already there is unchanged)", args.output)
        sys.exit(EXIT_INTERRUPTED)
    line = (f"rows in {summary['rows_in']:,}: scored {summary['scored']:,}, rejected {summary['rejected']:,} "
            f"-> {summary['output']} (rejects: {summary['rejects']}); "
            f"{summary['seconds']:.1f} s, {summary['rows_per_second'] or 0:,} rows/s")
    log.info("%s", line)
    sys.stdout.write(line + "\n")


if __name__ == "__main__":
    setup_logging()
    logging.getLogger("distributed").setLevel(logging.WARNING)  # cluster chatter; our progress lines stay
    main()
