"""Pipeline benchmark: wall time of a cold ``dvc repro`` and of the no-op ``dvc repro`` after it.

For each dataset profile it builds a throw-away copy of the project in a temporary
folder (the repo's files as ``git ls-files`` lists them, plus untracked files that are
not git-ignored, so uncommitted work is measured too), runs ``git init`` + commit,
links the public data files into ``data/external/<dataset>/`` (symlinks, never copies),
sets ``dataset`` in the copy's params.yaml and times, with the project venv's dvc:

* full   : ``dvc repro`` from nothing (no outputs, no DVC cache, no run cache);
* no-op  : ``dvc repro`` again straight after, which must find nothing to do.

Per-stage wall time comes from the full run's own output: every line is
timestamped as it arrives, and a stage lasts from DVC's "Running stage 'x'" line
to the next stage's (so it includes DVC's hashing and caching of the outputs).

risk_flag's labelled file is not available: its profile runs on the SYNTHETIC
stand-in from tests/synthetic.py (real unlabeled rows + a synthetic label). Its
timings are real; its model quality means nothing.

    python bench/pipeline.py                                  # all four profiles, once
    python bench/pipeline.py --datasets taiwan_credit --repeat 3
    python bench/pipeline.py --datasets taiwan_credit --busy 1   # a shared machine: one CPU-bound neighbour

Progress goes to stderr (logging); the Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src.config import read_params  # noqa: E402
from tests.conftest import ALL_DATASETS, shared_data_dir  # noqa: E402
from tests.synthetic import write_synthetic_risk_flag  # noqa: E402

log = logging.getLogger("bench.pipeline")

SYNTHETIC = "risk_flag"
STARTUP = "dvc start"
TARGET_FULL_S = {"taiwan_credit": 30.0}
TARGET_NOOP_S = 3.0
RUNNING = re.compile(r"Running stage '([^']+)'")
# A cold run during which other processes used more than this many cores on average counts as contended.
BUSY_CORES = 0.25


@dataclass
class Run:
    seconds: float
    returncode: int
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, text)

    def stage_seconds(self) -> dict[str, float]:
        starts = [(t, m.group(1)) for t, line in self.lines if (m := RUNNING.search(line))]
        ends = [t for t, _ in starts[1:]] + [self.seconds]
        stages = {name: end - start for (start, name), end in zip(starts, ends, strict=True)}
        # DVC's own start-up (imports, reading dvc.yaml/params, hashing deps) before the first stage.
        stages[STARTUP] = starts[0][0] if starts else self.seconds
        return stages

    def tail(self, n: int = 25) -> str:
        return "\n".join(line for _, line in self.lines[-n:])


@dataclass
class Result:
    profile: str
    rows: int | None
    full: list[float] = field(default_factory=list)
    noop: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)
    test_auc: float | None = None
    other_cpu: list[float] = field(default_factory=list)  # CPU-seconds other processes used during each cold run
    discarded: int = 0  # contended runs measured again (--retry-busy)
    skipped_stages_noop: bool = True
    error: str | None = None


def pipeline_stages() -> list[str]:
    """Stage names in dvc.yaml order (the pipeline's own list, so new stages show up by themselves)."""
    with (ROOT / "dvc.yaml").open(encoding="utf-8") as fh:
        return list(yaml.safe_load(fh)["stages"])


def venv_bin() -> Path:
    candidate = ROOT / ".venv" / "bin"
    return candidate if (candidate / "dvc").exists() else Path(sys.executable).parent


def project_files() -> list[str]:
    """Tracked files plus untracked, non-ignored ones, that exist in the working tree."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return sorted(f for f in set(out.split("\0")) if f and (ROOT / f).is_file())


def make_copy(dataset: str, dest: Path, data_dir: Path) -> None:
    """A fresh git repo holding the project files, with ``dataset`` linked in and selected."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    params_file = dest / "params.yaml"
    text = params_file.read_text(encoding="utf-8")
    text, n = re.subn(r"(?m)^dataset:.*$", f"dataset: {dataset}", text, count=1)
    params_file.write_text(text, encoding="utf-8")
    if n != 1 or read_params(params_file)["dataset"] != dataset:
        raise RuntimeError("could not set `dataset` in the copied params.yaml")

    external = dest / "data" / "external" / dataset
    external.mkdir(parents=True, exist_ok=True)
    if dataset == SYNTHETIC:
        write_synthetic_risk_flag(data_dir / SYNTHETIC / "test_unlabeled.csv", external)
    else:
        files = sorted(p for p in (data_dir / dataset).iterdir() if p.is_file())
        if not files:
            raise RuntimeError(f"no data files in {data_dir / dataset}")
        for src in files:
            (external / src.name).symlink_to(src.resolve())

    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench copy"], cwd=dest, check=True)


def bench_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv_bin().parent)
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive when printed, so stage timestamps are right
    env.pop("PYTHONPATH", None)
    # The copy's register stage must use its own embedded MLflow store, never a real tracking server.
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    return env


def cpu_counters() -> tuple[float, float]:
    """(CPU-seconds the whole machine has been busy, CPU-seconds used by this process and its waited children)."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        busy = float("nan")
    ours = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))
    return busy, ours


def other_cpu_seconds(before: tuple[float, float], after: tuple[float, float]) -> float:
    """CPU time other processes took while we ran: a measure of how contended the timing was."""
    return max(0.0, (after[0] - before[0]) - (after[1] - before[1]))


def wait_idle(limit_s: float, window_s: float = 5.0, max_cores: float = BUSY_CORES) -> None:
    """Wait (at most ``limit_s``) until other processes use under ``max_cores`` cores over ``window_s``."""
    started = time.monotonic()
    next_report = started
    while True:
        before = cpu_counters()
        time.sleep(window_s)
        busy = other_cpu_seconds(before, cpu_counters()) / window_s
        if busy < max_cores:
            return
        now = time.monotonic()
        if now - started >= limit_s:
            log.warning("machine still busy (other processes use %.1f cores); timing anyway", busy)
            return
        if now >= next_report:
            log.info("waiting for the machine to go idle (other processes use %.1f cores)", busy)
            next_report = now + 30


def run_timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> Run:
    """Run ``cmd``, timestamping each output line as it arrives."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    run = Run(seconds=0.0, returncode=0)

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append((time.perf_counter() - started, line.rstrip("\n")))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    run.returncode = proc.wait()
    run.seconds = time.perf_counter() - started
    thread.join()
    return run


class RunFailed(RuntimeError):
    """dvc repro exited non-zero in the copy."""


@dataclass
class Measurement:
    full: float
    noop: float
    stages: dict[str, float]
    other_cpu: float
    rows: int
    test_auc: float
    noop_reran: list[str]


@contextlib.contextmanager
def competing(n: int) -> Iterator[None]:
    """``n`` CPU-bound processes (a busy loop each) for the duration: a risk team's shared server."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def measure_once(dataset: str, data_dir: Path, keep: bool, idle_s: float, busy: int = 0) -> Measurement:
    """One fresh copy: cold dvc repro, then the no-op one (with ``busy`` competing processes)."""
    dvc = str(venv_bin() / "dvc")
    env = bench_env()
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-pipeline-{dataset}-"))
    try:
        make_copy(dataset, workdir, data_dir)
        if idle_s > 0:
            wait_idle(idle_s)
        log.info("%s: dvc repro (cold) in %s", dataset, workdir)
        with competing(busy):
            before = cpu_counters()
            full = run_timed([dvc, "repro"], workdir, env)
            other = other_cpu_seconds(before, cpu_counters())
        if full.returncode != 0:
            raise RunFailed(f"dvc repro exited {full.returncode}:\n{full.tail()}")
        noop = run_timed([dvc, "repro"], workdir, env)
        if noop.returncode != 0:
            raise RunFailed(f"no-op dvc repro exited {noop.returncode}:\n{noop.tail()}")
        reran = [m.group(1) for _, line in noop.lines if (m := RUNNING.search(line))]
        if reran:
            log.warning("%s: the second dvc repro re-ran %s (expected nothing to do)", dataset, reran)
        quality = json.loads((workdir / "metrics" / "data_quality.json").read_text(encoding="utf-8"))
        test = json.loads((workdir / "metrics" / "test.json").read_text(encoding="utf-8"))
        return Measurement(full=full.seconds, noop=noop.seconds, stages=full.stage_seconds(), other_cpu=other,
                           rows=int(quality["rows_in"]), test_auc=float(test["roc_auc"]), noop_reran=reran)
    finally:
        if keep:
            log.info("kept %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def bench_profile(dataset: str, repeat: int, data_dir: Path, keep: bool = False, idle_s: float = 0.0,
                  retry_busy: int = 0, busy: int = 0) -> Result:
    """``repeat`` measurements; with ``retry_busy``, a run contended by other processes is redone."""
    result = Result(profile=dataset, rows=None)
    for i in range(1, repeat + 1):
        for attempt in range(retry_busy + 1):
            try:
                m = measure_once(dataset, data_dir, keep, idle_s, busy)
            except RunFailed as exc:
                result.error = str(exc).splitlines()[0]
                log.error("%s: %s", dataset, exc)
                return result
            share = m.other_cpu / m.full
            log.info("%s run %d/%d: full %.1f s, no-op %.2f s (%s); other processes used %.1f CPU s (%.1f cores)",
                     dataset, i, repeat, m.full, m.noop, ", ".join(f"{k} {v:.1f} s" for k, v in m.stages.items()),
                     m.other_cpu, share)
            if busy or share <= BUSY_CORES or attempt == retry_busy:
                break
            result.discarded += 1
            log.warning("%s run %d/%d: contended (%.1f cores used by others); measuring again", dataset, i,
                        repeat, share)
        result.full.append(m.full)
        result.noop.append(m.noop)
        result.stages.append(m.stages)
        result.other_cpu.append(m.other_cpu)
        result.rows, result.test_auc = m.rows, m.test_auc
        result.skipped_stages_noop = result.skipped_stages_noop and not m.noop_reran
    return result


def _target(result: Result) -> str:
    full_median = statistics.median(result.full)
    noop_median = statistics.median(result.noop)
    parts = []
    if result.profile in TARGET_FULL_S:
        limit = TARGET_FULL_S[result.profile]
        parts.append(f"full <= {limit:g} s: {'met' if full_median <= limit else '**missed**'}")
    parts.append(f"no-op <= {TARGET_NOOP_S:g} s: {'met' if noop_median <= TARGET_NOOP_S else '**missed**'}")
    if not result.skipped_stages_noop:
        parts.append("**no-op re-ran stages**")
    return "; ".join(parts)


def table(results: list[Result], repeat: int) -> str:
    stat = "median of " + str(repeat) if repeat > 1 else "1 run"
    stages = [STARTUP, *pipeline_stages()]
    lines = [
        f"| profile | rows | full repro s ({stat}) | no-op repro s | "
        + " | ".join(f"{s} s" for s in stages) + " | test ROC-AUC | other CPU s | targets |",
        "|---|---:|---:|---:|" + "---:|" * len(stages) + "---:|---:|---|",
    ]
    for r in results:
        name = f"{r.profile} (SYNTHETIC label)" if r.profile == SYNTHETIC else r.profile
        if r.error or not r.full:
            lines.append(f"| {name} | {r.rows or ''} | failed: {r.error} | | " + " | " * (len(stages) + 2) + " |")
            continue
        stage_cells = [_stage_cell([s[st] for s in r.stages if st in s]) for st in stages]
        auc = f"{r.test_auc:.4f}" + (" (synthetic)" if r.profile == SYNTHETIC else "") if r.test_auc else ""
        full = f"{statistics.median(r.full):.1f}" + (f" (min {min(r.full):.1f})" if len(r.full) > 1 else "")
        noop = f"{statistics.median(r.noop):.2f}" + (f" (max {max(r.noop):.2f})" if len(r.noop) > 1 else "")
        lines.append(f"| {name} | {r.rows:,} | {full} | {noop} | "
                     + " | ".join(stage_cells) + f" | {auc} | {statistics.median(r.other_cpu):.0f} | {_target(r)} |")
    return "\n".join(lines)


def _stage_cell(seconds: list[float]) -> str:
    """A stage's median time, or "skipped" when DVC ran it in no run (its inputs and outputs unchanged)."""
    return f"{statistics.median(seconds):.1f}" if seconds else "skipped"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(ALL_DATASETS), choices=list(ALL_DATASETS),
                        help="profiles to run (risk_flag runs on the SYNTHETIC stand-in)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="cold + no-op runs per profile, each in a fresh copy; the table shows medians")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder holding <dataset>/<file> (default: $SHARED_DATA or ../shared/data)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project copies")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each cold run, wait up to SECONDS for other processes to leave the CPU idle")
    parser.add_argument("--retry-busy", type=int, default=0, metavar="K",
                        help=f"measure a cold run again (up to K times) when other processes used more than"
                             f" {BUSY_CORES} cores on average during it")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="run N competing CPU-bound processes during each cold run (a shared machine)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    data_dir = (args.data_dir or shared_data_dir()).resolve()

    load_before = os.getloadavg()
    started = time.perf_counter()
    results = [bench_profile(ds, args.repeat, data_dir, args.keep, args.wait_idle, args.retry_busy, args.busy)
               for ds in args.datasets]
    load_after = os.getloadavg()

    dvc_version = subprocess.run([str(venv_bin() / "dvc"), "--version"], capture_output=True, text=True,
                                 check=False).stdout.strip()
    neighbours = f", {args.busy} competing busy process(es)" if args.busy else ""
    print(f"## dvc repro wall time ({os.cpu_count()} cores, dvc {dvc_version}{neighbours})\n")
    print(table(results, args.repeat))
    discarded = sum(r.discarded for r in results)
    print("\nfull = cold `dvc repro` in a fresh copy (no outputs, no DVC cache); no-op = `dvc repro` again"
          " right after (nothing to do). Stage columns: from DVC's \"Running stage\" line to the next stage's,"
          " so each includes DVC's hashing/caching of that stage's outputs; `dvc start` is the time before"
          " the first stage starts (DVC start-up, reading dvc.yaml and params, hashing the raw data)."
          f" risk_flag runs on the SYNTHETIC stand-in (tests/synthetic.py): real timings, meaningless AUC."
          " `other CPU s`: CPU-seconds that processes other than this benchmark used during the cold run"
          " (median); well above 0 means another job competed for the 2 cores and the times are inflated"
          f" (LightGBM with n_jobs=2 is very sensitive to that).\nLoad average (1 min) before {load_before[0]:.2f},"
          f" after {load_after[0]:.2f}; contended runs measured again: {discarded};"
          f" benchmark wall time {time.perf_counter() - started:.0f} s.")
    if any(r.error for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
