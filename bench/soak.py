"""Soak benchmark: the service for 10 minutes at ~70 % of its maximum throughput, durable log and API keys on.

1. builds or reuses the serve benchmark's project (``--project``) and starts our service under
   ``gunicorn.conf.py`` (workers, their shipper, a throw-away SQLite log), as ``bench/serve.py`` does;
2. measures the maximum single-row throughput (wrk, closed loop, c=8, 10 s, reasons off);
3. drives ``--minutes`` of paced load at ``--share`` of it: ``--connections`` wrk connections, each
   pausing between requests (wrk's ``delay()``), re-aimed every slice so the rate stays on target;
4. prints, per slice of ``--slice`` seconds, the rate, p50/p99 and errors, the workers' RSS and the
   spool backlog; then errors in all (goal 0), RSS growth from the end of the first minute to the
   end (goal < 5 %), and whether every answered request reached the prediction log.

wrk measures latency from send to answer; a paced closed loop does not model a queue building up
behind a stall (coordinated omission), so treat p99 as the service's, not a user's.
Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve

log = logging.getLogger("bench.soak")

SHIPPER = "src.scoring.shipper"
DELAY_SCRIPT = """
local pause = @PAUSE@
function delay()
  -- whole milliseconds only: round up or down at random so the mean pause is `pause`
  local whole = math.floor(pause)
  if math.random() < pause - whole then return whole + 1 end
  return whole
end
"""


@dataclass
class Slice:
    second: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    worker_rss_mb: float
    shipper_rss_mb: float
    backlog_bytes: float


def run_wrk(url: str, body_file: Path, work: Path, connections: int, seconds: int, pause_ms: float | None,
            headers: dict[str, str]) -> tuple[int, int, float, float, float]:
    """(requests, errors, seconds, p50 ms, p99 ms) of one wrk run; paced when ``pause_ms`` is given."""
    script = serve.WRK_SCRIPT.replace("@BODY@", str(body_file)).replace("@LIMIT@", "0").replace(
        "@FLAG@", str(work / "unused.flag")).replace("@HEADERS@", serve.wrk_headers(headers))
    if pause_ms is not None:
        script += DELAY_SCRIPT.replace("@PAUSE@", f"{max(0.0, pause_ms):.3f}")
    path = work / "soak.lua"
    path.write_text(script, encoding="utf-8")
    proc = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "30s",
                           "-s", str(path), url], capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(int(data[k]) for k in ("status", "connect", "read", "write", "timeout"))
    return int(data["requests"]), errors, data["duration_us"] / 1e6, data["p50"] / 1000, data["p99"] / 1000


def memory(server: serve.Server) -> tuple[float, float]:
    """(RSS of the gunicorn workers summed, RSS of the shipper) in MB."""
    workers = shipper = 0.0
    for proc in server.processes()[1:]:  # the master first
        with suppress(psutil.NoSuchProcess):
            rss = proc.memory_info().rss / 1e6
            if SHIPPER in " ".join(proc.cmdline()):
                shipper += rss
            else:
                workers += rss
    return workers, shipper


def backlog(server: serve.Server, headers: dict[str, str]) -> float:
    text = requests.get(server.url + "/metrics", headers=headers, timeout=10).text
    return next((float(line.split()[1]) for line in text.splitlines()
                 if line.startswith("prediction_log_backlog_bytes ")), float("nan"))


def soak(args: argparse.Namespace) -> None:
    project = serve.build_project(args.project.resolve(), args.data.resolve())
    rows = serve.sample_rows(project.settings, 1)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        body = work / "body.json"
        body.write_bytes(serve.ours_body(rows, reasons=False))
        # An admin key (predictions and /metrics alike), as every request of a deployed service carries one.
        credentials, key = serve.api_key(work, "admin")
        headers = {"X-API-Key": key}
        server = serve.gunicorn_server(project, work, None, None, {"AUTH_FILE": str(credentials)})
        server.start()
        try:
            server.wait("/ready", 180, consecutive=5)
            url = server.url + "/api/v1/predict"
            run_wrk(url, body, work, 8, 3, None, headers)  # warm-up
            done, _, seconds, _, _ = run_wrk(url, body, work, 8, 10, None, headers)
            maximum = done / seconds
            target = args.share * maximum
            log.info("maximum %.0f req/s (c=8, closed loop); soaking at %.0f req/s (%.0f %%) for %.0f min",
                     maximum, target, 100 * args.share, args.minutes)
            before = logged_rows(server)
            slices = paced(server, url, body, work, args, target, headers)
            report(slices, maximum, target, args, logged_rows(server) - before)
        finally:
            server.stop()


def paced(server: serve.Server, url: str, body: Path, work: Path, args: argparse.Namespace, target: float,
          headers: dict[str, str]) -> list[Slice]:
    per_connection = target / args.connections
    pause = 1000 / per_connection  # ms per request cycle; the answer's own latency comes off below
    slices: list[Slice] = []
    started = time.monotonic()
    while time.monotonic() - started < args.minutes * 60:
        done, errors, seconds, p50, p99 = run_wrk(url, body, work, args.connections, args.slice, pause, headers)
        rps = done / seconds
        # aim the next slice: the cycle is pause + latency, so scale the pause by how far off the rate was
        cycle = 1000 * args.connections / max(rps, 1.0)
        pause = max(0.0, pause + (1000 / per_connection - cycle))
        workers, shipper = memory(server)
        item = Slice(time.monotonic() - started, done, errors, rps, p50, p99, workers, shipper,
                     backlog(server, headers))
        slices.append(item)
        log.info("%5.0f s: %6.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d  workers %.0f MB  shipper %.0f MB"
                 "  backlog %.0f B", item.second, rps, p50, p99, errors, workers, shipper, item.backlog_bytes)
    return slices


def logged_rows(server: serve.Server) -> int:
    """Rows in the server's prediction log once everything spooled so far is shipped."""
    log_ = serve.PredictionLog(server.env["DATABASE_URL"])
    try:
        return log_.count()
    finally:
        log_.dispose()


def report(slices: list[Slice], maximum: float, target: float, args: argparse.Namespace, logged: int) -> None:
    answered = sum(s.requests - s.errors for s in slices)
    errors = sum(s.errors for s in slices)
    after_minute = next((s for s in slices if s.second >= 60), slices[0])
    growth = (slices[-1].worker_rss_mb - after_minute.worker_rss_mb) / after_minute.worker_rss_mb
    p99s = [s.p99_ms for s in slices]
    print(f"\n## Soak: {args.minutes:g} min at {100 * args.share:.0f} % of {maximum:,.0f} req/s "
          f"(target {target:,.0f} req/s, {args.connections} paced connections)\n")
    print(serve.table(["slice end, s", "req/s", "p50 ms", "p99 ms", "errors", "workers RSS MB", "shipper RSS MB",
                       "spool backlog, bytes"],
                      [[f"{s.second:.0f}", f"{s.rps:,.0f}", f"{s.p50_ms:.2f}", f"{s.p99_ms:.2f}", str(s.errors),
                        f"{s.worker_rss_mb:.0f}", f"{s.shipper_rss_mb:.0f}", f"{s.backlog_bytes:,.0f}"]
                       for s in slices]))
    print()
    print(serve.table(["measure", "value", "goal"], [
        ["requests answered / errors", f"{answered:,} / {errors}", "0 errors"],
        ["mean rate", f"{statistics.fmean(s.rps for s in slices):,.0f} req/s", f"{target:,.0f} req/s"],
        ["p99 per slice: median / worst", f"{statistics.median(p99s):.2f} / {max(p99s):.2f} ms", "-"],
        ["workers' RSS, end of minute 1 -> end", f"{after_minute.worker_rss_mb:.0f} -> "
         f"{slices[-1].worker_rss_mb:.0f} MB ({100 * growth:+.1f} %)", "< 5 %"],
        # wrk stops a slice with requests in flight: the service answered and logged them, wrk did not count them
        ["rows the soak added to the prediction log (spool shipped)", f"{logged:,}",
         f"{answered:,} answered + up to {len(slices) * args.connections} left in flight at slice ends"],
    ]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True,
                        help="the serve benchmark's project directory (built there if empty)")
    parser.add_argument("--data", type=Path, default=serve.default_data_file(), help="the full UCI_Credit_Card.csv")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.7, help="of the measured maximum throughput")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--slice", type=int, default=10, help="seconds per reported slice")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    soak(args)


if __name__ == "__main__":
    main()
