"""The retraining loop: pull data → ``dvc repro`` (train, evaluate, gate, register) → push → reload the service.

``make retrain`` and the weekly workflow call this. The pipeline itself decides
whether the new model may replace the champion (the register stage's quality gate);
this module only sequences the steps, asks the registry whether the champion
changed (and for the gate's record of the model the repro registered), and if so tells the running service to
load it (``POST /admin/reload`` with ``$API_KEY``, a key with the admin scope) and checks
that ``/ready`` then reports the new version. Nothing is lost on failure: a failed
step stops the loop with its exit code and names the step, and the previous
champion keeps serving.

    python -m src.modeling.retrain                       # pull, repro, push, reload http://<serve.bind>
    python -m src.modeling.retrain --no-pull --no-push   # offline
    python -m src.modeling.retrain --reload-url http://10.0.0.5:8000
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from src.common import PipelineError, setup_logging
from src.config import ConfigError, RetrainSettings, Settings, env, load_settings
from src.modeling.register import registration
from src.modeling.registry import champion_promoted, champion_version
from src.modeling.tracking import connect

log = logging.getLogger(__name__)

KEY_ENV = env.API_KEY  # an API key with the admin scope, for POST /admin/reload (python -m src.auth)

Runner = Callable[[Sequence[str]], int]
CONFIRMATIONS = 8  # /ready answers in a row that must report the new champion after a reload...
SETTLE_SECONDS = 3.0  # ...over at least this long: every worker's watcher has taken the reload up by then


class RetrainError(RuntimeError):
    """A step of the loop failed; ``step`` names it and ``code`` is the exit code to return."""

    def __init__(self, step: str, message: str, code: int = 1) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.code = code


@dataclass
class RetrainResult:
    """What one pass of the loop did, printed as JSON at the end."""

    registered_model: str
    champion_before: str | None = None
    champion_after: str | None = None
    gate: dict[str, Any] | None = None
    promoted: bool = False
    pulled: bool = False
    pushed: bool = False
    reload: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)


def run_command(argv: Sequence[str]) -> int:
    """Run one DVC command in the foreground; its output goes to stderr, keeping stdout for the summary."""
    return subprocess.run(list(argv), check=False, stdout=sys.stderr).returncode


def service_url(settings: Settings, override: str | None = None) -> str:
    """Where the running service listens: --reload-url, retrain.reload_url, else http://<serve.bind>."""
    url = override or settings.retrain.reload_url or f"http://{settings.serve.bind}"
    return url.rstrip("/")


def _http_json(url: str, *, method: str = "GET", token: str | None = None,
               timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        return exc.code, body


def reload_service(url: str, token: str | None, model_name: str, champion: str | None, timeout: float) -> str:
    """Bring the service at ``url`` onto the registry's champion; a one-line outcome.

    The service is compared with the registry, not with this run's gate verdict, so a
    reload that failed last time is retried by the next pass even when nothing was
    retrained. No running service is not an error (it loads the champion when it
    starts); a service pinned to another model is left alone; a refused or failed
    reload is an error (the previous model keeps serving).
    """
    try:
        status, body = _http_json(f"{url}/ready", timeout=min(timeout, 5.0))
    except (OSError, ValueError):
        return f"no service answering at {url}: it loads the champion when it starts"
    model = body.get("model") or {}
    served = str(model["version"]) if status == 200 and "version" in model else None
    if champion is None or served == champion:
        return f"{url} already serves version {served}"
    if status == 200 and (model.get("name") != model_name or not str(model.get("uri", "")).endswith("@champion")):
        return f"{url} serves {model.get('uri')}, not the champion alias: left alone"
    status, body = _http_json(f"{url}/admin/reload", method="POST", token=token, timeout=timeout)
    if status in (401, 403):
        raise RetrainError("reload", f"{url} serves version {served}, the champion is {champion}, and POST "
                                     f"/admin/reload answered {status}: set {KEY_ENV} to a key with the admin "
                                     "scope (python -m src.auth keys create --scope admin), or send SIGHUP to "
                                     "gunicorn; the previous model keeps serving")
    if status != 200:
        raise RetrainError("reload", f"POST {url}/admin/reload answered {status}: "
                                     f"{body.get('error', body)}; the previous model keeps serving")
    # The answering worker reloads at once, the others on their next request, in the background:
    # done when several probes in a row (new connections, spread over the workers) see the champion.
    # Probes may all land on one worker; the others take the reload up from their own watcher thread
    # within a check interval and a model load, so the streak must also last SETTLE_SECONDS.
    deadline = time.monotonic() + timeout
    streak, since = 0, time.monotonic()
    while time.monotonic() < deadline:
        status, body = _http_json(f"{url}/ready", timeout=min(timeout, 5.0))
        served = str((body.get("model") or {}).get("version")) if status == 200 else None
        if served != champion:
            streak, since = 0, time.monotonic()
        else:
            streak += 1
        if streak >= CONFIRMATIONS and time.monotonic() - since >= SETTLE_SECONDS:
            return f"reloaded: {url} serves version {served}"
        time.sleep(0.2)
    raise RetrainError("reload", f"{url}/ready still reports version {served}, expected {champion}, "
                                 f"after {timeout:.0f} s")


def retrain(settings: Settings, *, pull: bool, push: bool, reload_url: str | None,
            runner: Runner = run_command, token: str | None = None) -> RetrainResult:
    """One pass of the loop; raises :class:`RetrainError` naming the step that failed."""
    dvc = [sys.executable, "-m", "dvc"]
    remote = ["-r", settings.retrain.remote] if settings.retrain.remote else []
    result = RetrainResult(registered_model=settings.registered_model_name)
    gate_file = settings.paths.metrics / "gate.json"

    def step(name: str, argv: Sequence[str]) -> None:
        log.info("retrain: %s (%s)", name, " ".join(argv[2:]))
        started = time.monotonic()
        code = runner(argv)
        result.steps.append({"step": name, "exit_code": code, "seconds": round(time.monotonic() - started, 1)})
        if code != 0:
            raise RetrainError(name, f"`{' '.join(argv[2:])}` exited with {code}", code=code)

    result.champion_before = champion_version(settings)
    if pull:
        # --allow-missing: a new remote (or one without some outputs yet) is not a failure;
        # whatever is missing is rebuilt by the repro below.
        step("pull", [*dvc, "pull", "--allow-missing", *remote])
        result.pulled = True
    step("repro", [*dvc, "repro"])
    result.gate = registered_report(settings, gate_file)
    result.champion_after = champion_version(settings)
    result.promoted = champion_promoted(result.champion_after, result.champion_before)
    if push:
        step("push", [*dvc, "push", *remote])
        result.pushed = True
    if result.promoted:
        log.info("retrain: new champion %s v%s (was v%s)", result.registered_model, result.champion_after,
                 result.champion_before)
    else:
        decision = (result.gate or {}).get("decision", "no report")
        log.info("retrain: champion unchanged (v%s; gate: %s)", result.champion_after, decision)
    result.reload = reload_service(service_url(settings, reload_url), token, result.registered_model,
                                   result.champion_after, settings.retrain.reload_timeout)
    log.info("retrain: %s", result.reload)
    return result


def registered_report(settings: Settings, gate_file: Path) -> dict[str, Any] | None:
    """The registry's record (version, gate decision and reasons) of the model metrics/gate.json reports on."""
    try:
        report = json.loads(gate_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    connect(settings)
    return registration(MlflowClient(), settings.registered_model_name, str(report.get("model_sha256", "")))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.modeling.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--pull", action=argparse.BooleanOptionalAction, default=None,
                        help="dvc pull before the repro (default: retrain.pull)")
    parser.add_argument("--push", action=argparse.BooleanOptionalAction, default=None,
                        help="dvc push after the repro (default: retrain.push)")
    parser.add_argument("--reload-url", default=None,
                        help="the running service to reload (default: retrain.reload_url, else http://<serve.bind>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.params)
        cfg: RetrainSettings = settings.retrain
        result = retrain(settings, pull=cfg.pull if args.pull is None else args.pull,
                         push=cfg.push if args.push is None else args.push,
                         reload_url=args.reload_url, token=env.text(KEY_ENV))
    except (ConfigError, PipelineError) as exc:
        log.error("%s", exc)
        return 2
    except RetrainError as exc:
        log.error("retrain failed at %s; the previous champion keeps serving", exc)
        return exc.code
    sys.stdout.write(json.dumps(asdict(result), indent=2) + "\n")  # the run's summary, for scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
