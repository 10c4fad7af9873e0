"""``python -m src.monitoring drift | performance | exporter`` (docs/monitoring.md).

Exit codes: 0 fine; 1 drift flagged with --fail-on-drift, or decay with --fail-on-decay;
2 the input cannot be used (missing file or columns, empty window, bad labels...).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from src import notify
from src.common import PipelineError, setup_logging, write_json
from src.config import ConfigError, Settings, load_settings
from src.monitoring.drift import describe, drift_event, run_drift
from src.monitoring.exporter import serve
from src.monitoring.performance import decay_event, run_performance, write_markdown
from src.monitoring.sources import (
    InputError,
    applicant_rows,
    database_url,
    load_model,
    parse_time,
    read_frame,
    read_log,
)

log = logging.getLogger("src.monitoring")

EXIT_OK, EXIT_FLAGGED, EXIT_BAD_INPUT = 0, 1, 2


def _add_batch_source(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("source", nargs="?", help=f"{what}: a .csv/.parquet file or a folder of them "
                        "(local or s3://); omit and use --log for the serving prediction log")
    parser.add_argument("--log", action="store_true", help="read the serving prediction log instead of a file")
    parser.add_argument("--since", help="log window start: ISO time (UTC when naive) or a span back (24h, 7d)")
    parser.add_argument("--until", help="log window end (exclusive), same forms; default now")
    parser.add_argument("--database-url", help="prediction log URL (default $DATABASE_URL, else serve.database_url)")
    parser.add_argument("--output", type=Path, help="JSON result (default <metrics>/<command>.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.monitoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    drift = sub.add_parser("drift", help="PSI of a batch vs the training reference, with an HTML report")
    _add_batch_source(drift, "applicants (raw, or scored with --include-features)")
    drift.add_argument("--model-uri", help="model to score with and take the reference scores from "
                       "(default: like the service, $MODEL_URI / serve.model_uri / the profile's champion)")
    drift.add_argument("--html", type=Path, help="HTML report path (default <reports>/drift_report.html)")
    drift.add_argument("--no-html", action="store_true", help="skip the HTML report")
    drift.add_argument("--fail-on-drift", action="store_true", help="exit 1 when drift is flagged")

    perf = sub.add_parser("performance", help="ROC-AUC, KS, calibration, band rates once outcomes are known")
    _add_batch_source(perf, "scored rows (id, probability, decision, scored_at, model_version)")
    perf.add_argument("--labels", required=True, help="outcomes file (.csv/.parquet) with an id and a 0/1 label")
    perf.add_argument("--id-column", default="id", help="id column of the labels file (default id; for the "
                      "prediction log the id is <request_id>:<row index in the request>)")
    perf.add_argument("--label-column", help="outcome column (default: the profile's target column)")
    perf.add_argument("--period", choices=["day", "week", "month"], help="also report per period of scoring time")
    perf.add_argument("--by", action="append", default=[], metavar="COLUMN",
                      help="also report per group of this column of the outcomes file (e.g. an age band held "
                           "apart from the application); repeatable")
    perf.add_argument("--reference-auc", type=float, help="ROC-AUC to judge decay against (default: the "
                      "scoring model's logged test ROC-AUC, else metrics/test.json)")
    perf.add_argument("--markdown", nargs="?", const=True, default=None, metavar="PATH",
                      help="also write a Markdown summary (default path <reports>/performance.md)")
    perf.add_argument("--fail-on-decay", action="store_true", help="exit 1 when decay is flagged")

    exp = sub.add_parser("exporter", help="serve drift/performance results as Prometheus gauges")
    exp.add_argument("--bind", help="host:port (default monitoring.exporter_bind)")
    exp.add_argument("--drift-file", type=Path, help="default <metrics>/drift.json")
    exp.add_argument("--performance-file", type=Path, help="default <metrics>/performance.json")
    return parser


def _window(args: argparse.Namespace, settings: Settings) -> tuple[pd.DataFrame, str]:
    if args.source and (args.log or args.since or args.until):
        raise InputError("give either a file/folder or --log/--since/--until, not both")
    if not (args.log or args.since or args.until):
        raise InputError("nothing to read: give a file/folder, or --log (with --since/--until) for the prediction log")
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    url = database_url(settings, args.database_url)
    return read_log(url, since, until), f"prediction log ({args.since or 'start'} .. {args.until or 'now'})"


def _scored_rows(args: argparse.Namespace, settings: Settings) -> tuple[pd.DataFrame, str]:
    if args.source:
        return read_frame(args.source), args.source
    return _window(args, settings)


def cmd_drift(args: argparse.Namespace, settings: Settings) -> int:
    frame, source = _scored_rows(args, settings)
    batch = applicant_rows(frame, settings.profile, source)
    if batch.frame.empty:
        raise InputError(f"{source}: none of its {batch.rows_in} row(s) passed validation")
    model = load_model(settings, args.model_uri)
    html = None if args.no_html else (args.html or settings.paths.reports / "drift_report.html")
    output = args.output or settings.paths.metrics / "drift.json"
    result = run_drift(settings, batch, model, output, html)
    print(describe(result))
    print(f"wrote {output}" + (f" and {html}" if html else ""))
    if result.flag:
        notify.send(drift_event(result, settings.dataset, source, output, html), settings.notify)
    return EXIT_FLAGGED if (result.flag and args.fail_on_drift) else EXIT_OK


def cmd_performance(args: argparse.Namespace, settings: Settings) -> int:
    scored, source = _scored_rows(args, settings)
    labels = read_frame(args.labels)
    summary = run_performance(settings, scored, source, labels, args.labels, args.id_column,
                              args.label_column or settings.profile.target_column, args.period, args.reference_auc,
                              tuple(args.by))
    output = args.output or settings.paths.metrics / "performance.json"
    write_json(output, summary)
    o = summary["overall"]
    print(f"performance: ROC-AUC {o['roc_auc']} (reference {summary['reference']['roc_auc']}), KS {o['ks']}, "
          f"Brier {o['brier']}, approval rate {o['approval_rate']}; matched {summary['counts']['matched']} of "
          f"{summary['counts']['scored']} scored rows; {'DECAY' if summary['decay'] else 'no decay'}")
    print(f"wrote {output}")
    report = None
    if args.markdown is not None:
        report = settings.paths.reports / "performance.md" if args.markdown is True else Path(args.markdown)
        print(f"wrote {write_markdown(summary, report)}")
    if summary["decay"]:
        notify.send(decay_event(summary, settings, source, [str(output), *([str(report)] if report else [])]),
                    settings.notify)
    return EXIT_FLAGGED if (summary["decay"] and args.fail_on_decay) else EXIT_OK


def cmd_exporter(args: argparse.Namespace, settings: Settings) -> int:
    host, _, port = (args.bind or settings.monitoring.exporter_bind).rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--bind must be host:port, got {args.bind!r}")
    serve(host, int(port), args.drift_file or settings.paths.metrics / "drift.json",
          args.performance_file or settings.paths.metrics / "performance.json")
    return EXIT_OK


COMMANDS = {"drift": cmd_drift, "performance": cmd_performance, "exporter": cmd_exporter}


def main(argv: list[str] | None = None) -> int:
    """Run one command; expected failures print one line and return 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.params)
        return COMMANDS[args.command](args, settings)
    except (PipelineError, ConfigError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    setup_logging()
    sys.exit(main())
