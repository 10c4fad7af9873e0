"""``python -m src.flows``: run one flow once, list the schedules, or serve the deployments.

    python -m src.flows run daily-batch --date 2026-12-04   # score what landed, then monitor (no server)
    python -m src.flows run monitor --date 2026-12-04
    python -m src.flows run retrain --no-push
    python -m src.flows schedules                             # what `serve` would schedule
    python -m src.flows serve                                 # serve the deployments (PREFECT_API_URL's server)

Exit codes: 0 done; 1 the flow failed (the webhook was told); 2 bad input or settings (one line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from datetime import date

from src.common import PipelineError, setup_logging
from src.config import ConfigError, load_settings

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.flows", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one flow once, here, with no server")
    run.add_argument("flow", choices=("daily-batch", "monitor", "retrain"))
    run.add_argument("--date", help="run date YYYY-MM-DD (daily-batch, monitor; default today, UTC)")
    run.add_argument("--no-monitor", action="store_true", help="daily-batch: do not run monitor after it")
    run.add_argument("--pull", action=argparse.BooleanOptionalAction, default=None, help="retrain: dvc pull first")
    run.add_argument("--push", action=argparse.BooleanOptionalAction, default=None, help="retrain: dvc push after")
    run.add_argument("--reload-url", help="retrain: the running service to reload")
    run.add_argument("--remote", help="retrain: the DVC remote to pull from and push to (default: retrain.remote)")
    sub.add_parser("schedules", help="print the deployments and their schedules")
    serve = sub.add_parser("serve", help="serve the deployments on their schedules (PREFECT_API_URL's server)")
    serve.add_argument("--with-server", action="store_true",
                       help="first start a local Prefect server (SQLite under $PREFECT_HOME) and use it")
    serve.add_argument("--port", type=int, default=4200, help="the local server's port (with --with-server)")
    return parser


def run_flow(args: argparse.Namespace) -> dict:
    from src.flows.flows import daily_batch, monitor, retrain_flow  # noqa: PLC0415  (Prefect only when used)

    if args.date:
        try:
            date.fromisoformat(args.date)
        except ValueError:
            raise ConfigError(f"--date must be YYYY-MM-DD, got {args.date!r}") from None  # before Prefect starts
    if args.flow == "daily-batch":
        return daily_batch(run_date=args.date, params=args.params, monitor_after=not args.no_monitor)
    if args.flow == "monitor":
        return monitor(run_date=args.date, params=args.params)
    return retrain_flow(params=args.params, pull=args.pull, push=args.push, reload_url=args.reload_url,
                        remote=args.remote)


def schedules(params: str) -> list[dict]:
    from src.flows.flows import deployments  # noqa: PLC0415

    return [{"deployment": d.name, "flow": d.flow_name,
             "schedules": [{"cron": s.schedule.cron, "timezone": s.schedule.timezone} for s in d.schedules or []]}
            for d in deployments(load_settings(params), params)]


def serve_deployments(args: argparse.Namespace) -> None:
    """Serve the deployments; with --with-server, on a local Prefect server started here (stopped on exit)."""
    server = None
    if args.with_server:
        url = f"http://127.0.0.1:{args.port}/api"
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(args.port)], env={**os.environ, "PREFECT_API_URL": url})
        wait_for_server(url, server)
        os.environ["PREFECT_API_URL"] = url
        log.info("Prefect server at %s (UI: http://127.0.0.1:%d), database under %s", url, args.port,
                 os.environ.get("PREFECT_HOME", "~/.prefect"))
    from prefect import serve  # noqa: PLC0415  (after PREFECT_API_URL is set: Prefect reads it on import)

    from src.flows.flows import deployments  # noqa: PLC0415

    try:
        serve(*deployments(load_settings(args.params), args.params))
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PipelineError(f"the Prefect server exited with {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise PipelineError(f"the Prefect server did not answer at {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's client: a line per API call otherwise
    args = build_parser().parse_args(argv)
    try:
        load_settings(args.params)  # a bad params file is one line, before Prefect starts
        if args.command == "run":
            sys.stdout.write(json.dumps(run_flow(args), indent=2, default=str) + "\n")
        elif args.command == "schedules":
            sys.stdout.write(json.dumps(schedules(args.params), indent=2) + "\n")
        else:
            serve_deployments(args)
    except (ConfigError, PipelineError) as exc:
        log.error("%s", exc)
        return EXIT_BAD_INPUT
    except Exception as exc:  # the flow failed: Prefect logged it and the webhook was told
        log.error("flow failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
