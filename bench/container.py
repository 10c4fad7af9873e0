"""Container benchmark: build time, image size, cold start to /ready, first prediction, for the repo's Dockerfile.

One run on this machine (no Docker daemon: ../shared/tools/container-sandbox.sh, i.e.
buildah + podman on the vfs storage driver):

1. exports the repo's champion from its embedded MLflow store (or takes ``--model-dir``,
   an exported model directory) and registers it as v1 @champion on a throw-away
   ``mlflow server`` on 127.0.0.1 (proxied artifacts, like a team registry);
2. builds the Dockerfile with ``MLFLOW_TRACKING_URI`` / ``MODEL_URI`` build args, timed
   (no layer cache: every build is cold, the serving packages come from PyPI);
3. reports the image's size as stored (uncompressed, like ``docker images``), the base
   image's, and the compressed size pushed to a registry on 127.0.0.1 (what ECR stores);
4. ``--starts`` times: starts a container (published port through slirp4netns, as
   ``sandbox run`` does), polls ``/ready`` every 50 ms: cold start = ``run`` issued to the
   first 200; then one ``POST /api/v1/predict`` (one applicant, reasons on): the
   /ready-to-first-prediction latency; then ``--predictions`` more, sequentially: median.

    python bench/container.py                      # 3 cold starts, 20 predictions each
    python bench/container.py --starts 5 --keep-image
    python bench/container.py --model-dir /tmp/exported --skip-push

Progress goes to stderr (logging); the Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from src.config import load_settings  # noqa: E402
from src.modeling import registry  # noqa: E402
from src.modeling.tracking import connect  # noqa: E402
from tests.conftest import default_applicant  # noqa: E402
from tests.integration.conftest import free_port, running_mlflow_server  # noqa: E402

log = logging.getLogger("bench.container")

SANDBOX = Path(os.environ.get("CONTAINER_SANDBOX", ROOT.parent / "shared" / "tools" / "container-sandbox.sh"))
BASE_IMAGE = "docker.io/library/python:3.11-slim"
READY_TIMEOUT = 300.0  # seconds
POLL = 0.05  # seconds between /ready probes


@dataclass(frozen=True)
class Start:
    cold_start_s: float      # `run` issued -> first /ready 200
    created_s: float         # `run` issued -> podman returned the container id (vfs copies the image)
    first_ms: float          # /ready 200 -> first prediction answered
    median_ms: float         # the next predictions, sequential


def sandbox(*args: str, env: dict[str, str], timeout: float = 3600) -> str:
    proc = subprocess.run(["bash", str(SANDBOX), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{SANDBOX.name} {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.stdout


def podman_size(ref: str) -> int:
    """Bytes of an image in the sandbox's (vfs) store, as `podman images` counts them."""
    out = subprocess.run(["podman", "--storage-driver", os.environ.get("CSB_STORAGE_DRIVER", "vfs"), "image",
                          "inspect", "--format", "{{.Size}}", ref], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def pushed_size(registry_url: str, repo: str, tag: str) -> int:
    """Compressed bytes a registry stores for the image: its layers plus its config, from the manifest."""
    resp = requests.get(f"{registry_url}/v2/{repo}/manifests/{tag}", timeout=30, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"})
    resp.raise_for_status()
    manifest = resp.json()
    return sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]


def export_champion(dest: Path) -> tuple[Path, str]:
    """The repo's current champion from its own MLflow store, as an exported directory; and its name."""
    settings = load_settings(ROOT / "params.yaml")
    connect(settings)
    name = settings.registered_model_name
    return registry.export(MlflowClient(), name, registry.CHAMPION, dest), name


def one_start(tag: str, env: dict[str, str], applicant: dict[str, Any], predictions: int) -> Start:
    port = free_port()
    issued = time.monotonic()
    cid = sandbox("run", tag, str(port), env=env).strip().splitlines()[-1]
    created = time.monotonic()
    base = f"http://127.0.0.1:{port}"
    body = {"applicants": [applicant], "reasons": True}
    try:
        with requests.Session() as http:
            while True:
                if time.monotonic() - issued > READY_TIMEOUT:
                    raise SystemExit(f"/ready not 200 after {READY_TIMEOUT:.0f} s:\n{sandbox('logs', cid, env=env)}")
                try:
                    if http.get(base + "/ready", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(POLL)
            ready = time.monotonic()
            first = http.post(base + "/api/v1/predict", json=body, timeout=60)
            first_done = time.monotonic()
            first.raise_for_status()
            times = []
            for _ in range(predictions):
                t0 = time.perf_counter()
                http.post(base + "/api/v1/predict", json=body, timeout=60).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        sandbox("stop", cid, env=env)
    start = Start(cold_start_s=ready - issued, created_s=created - issued, first_ms=(first_done - ready) * 1000,
                  median_ms=statistics.median(times) if times else float("nan"))
    log.info("start: %s", start)
    return start


def push_rows(tag: str, env: dict[str, str]) -> list[tuple[str, str]]:
    """Push to a registry on 127.0.0.1: the compressed size a registry (ECR) stores, and the push time."""
    port = free_port()
    sandbox("registry-start", str(port), env=env)
    try:
        started = time.monotonic()
        sandbox("push", tag, f"127.0.0.1:{port}/credit-default:bench", env=env)
        push_s = time.monotonic() - started
        size = pushed_size(f"http://127.0.0.1:{port}", "credit-default", "bench")
    finally:
        sandbox("registry-stop", env=env)
    return [("image size pushed (compressed layers)", mb(size)), ("push to a registry on 127.0.0.1", f"{push_s:.0f} s")]


def table(rows: list[tuple[str, str]]) -> str:
    lines = ["| measure | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def mb(size: int) -> str:
    return f"{size / 1e6:,.0f} MB"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="exported model directory (default: export the champion)")
    parser.add_argument("--starts", type=int, default=3, help="cold starts to time (default 3)")
    parser.add_argument("--predictions", type=int, default=20, help="predictions after the first, per start")
    parser.add_argument("--skip-push", action="store_true", help="do not measure the pushed (compressed) size")
    parser.add_argument("--keep-image", action="store_true", help="leave the built image in local storage")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    env = {**os.environ, "CSB_WAIT": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    tag = f"localhost/credit-default-bench:{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="bench-container-") as tmp_name:
        tmp = Path(tmp_name)
        env["TMPDIR"] = str(tmp)  # the sandbox's registry state stays in here
        if args.model_dir:
            model_dir, name = args.model_dir, json.loads((args.model_dir / "registry.json").read_text())[
                "registered_model"]
        else:
            model_dir, name = export_champion(tmp / "exported")
        meta = mlflow.pyfunc.load_model(str(model_dir)).unwrap_python_model().meta
        applicant = default_applicant(meta)
        log.info("base image (built once): %s", sandbox("base", env=env).strip().splitlines()[-1])
        with running_mlflow_server(tmp / "mlflow") as uri:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            with contextlib.redirect_stdout(sys.stderr):  # mlflow prints run links: keep stdout for the table
                registry.import_exported(MlflowClient(uri, uri), model_dir, name, registry.CHAMPION, "bench")
            log.info("building %s (model %s@champion from %s)", tag, name, uri)
            started = time.monotonic()
            sandbox("build", str(ROOT), tag, "--", "--network", "host", "--build-arg", f"MLFLOW_TRACKING_URI={uri}",
                    "--build-arg", f"MODEL_URI=models:/{name}@champion", env=env)
            build_s = time.monotonic() - started
        try:
            # Starts first: `run` installs podman, which the size queries below use.
            starts = [one_start(tag, env, applicant, args.predictions) for _ in range(args.starts)]
            rows = [("build (cold, no layer cache; serving packages from PyPI)", f"{build_s:.0f} s"),
                    ("image size (uncompressed, as stored)", mb(podman_size(tag))),
                    ("  of which the base image (local python:3.11-slim stand-in)", mb(podman_size(BASE_IMAGE)))]
            if not args.skip_push:
                rows += push_rows(tag, env)
        finally:
            if not args.keep_image:
                sandbox("rmi", tag, env=env)
    med = statistics.median
    rows += [
        (f"cold start: `run` to /ready 200 (median of {len(starts)}; min-max)",
         f"{med(s.cold_start_s for s in starts):.1f} s ({min(s.cold_start_s for s in starts):.1f}-"
         f"{max(s.cold_start_s for s in starts):.1f})"),
        ("  of which creating the container (vfs copies the image)", f"{med(s.created_s for s in starts):.1f} s"),
        ("  container created to /ready 200: gunicorn, 2 workers, model load (median)",
         f"{med(s.cold_start_s - s.created_s for s in starts):.1f} s"),
        ("/ready to first prediction answered (median)", f"{med(s.first_ms for s in starts):.0f} ms"),
        (f"next {args.predictions} predictions, one at a time (median)", f"{med(s.median_ms for s in starts):.1f} ms"),
    ]
    sys.stdout.write(table(rows) + "\n")


if __name__ == "__main__":
    main()
