"""The retraining loop end to end: real DVC, the embedded MLflow registry, a real gunicorn to reload.

One scenario on a fresh copy of the project (4,000 real taiwan_credit rows), its last two passes
run as the Prefect retrain flow (src/flows):
first pass registers the first champion with no service running; a running service
pinned to the champion alias is then moved to each new champion by the next passes;
a wrong token fails the pass at the reload step (previous model keeps serving) and the
next pass, with nothing to retrain, still converges the service; a model that fails
the quality gate is registered but neither promoted nor served.

About four minutes of DVC and MLflow subprocesses, so it is a background story (marker ``story``): it
starts with the session and the test, run last, waits for it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import SAMPLE_ROWS, link_data, on_a_copy, sh
from tests.integration.serving import running_gunicorn


def set_param(repo: Path, key: str, value: object) -> None:
    """Rewrite the one ``  key: ...`` line of the copy's params.yaml (keeps comments and layout)."""
    path = repo / "params.yaml"
    text, count = re.subn(rf"(?m)^(\s+{key}:)\s*[^#\n]*?(\s*#.*)?$", rf"\g<1> {value}\g<2>",
                          path.read_text(encoding="utf-8"), count=1)
    assert count == 1, f"no '{key}:' line in params.yaml"
    path.write_text(text, encoding="utf-8")


def retrain(repo: Path, *args: str, token: str | None = None, flow: bool = False,
            ) -> tuple[subprocess.CompletedProcess[str], Any]:
    """One pass: ``python -m src.modeling.retrain`` (what `make retrain` runs), or with ``flow`` the retrain
    flow (``python -m src.flows run retrain``, what the schedule and the GitHub workflow run): one loop."""
    env = {"API_KEY": token} if token else {}
    command = ["-m", "src.flows", "run", "retrain"] if flow else ["-m", "src.modeling.retrain"]
    proc = sh(repo, sys.executable, *command, *args, check=False, env=env)
    summary = json.loads(proc.stdout) if proc.returncode == 0 else None
    return proc, summary


def served_version(url: str) -> str:
    body = requests.get(f"{url}/ready", timeout=10).json()
    return str(body["model"]["version"])


def retrain_story(repo: Path, tmp_path: Path) -> None:
    link_data(repo, "taiwan_credit")
    set_param(repo, "sample_rows", SAMPLE_ROWS)

    # 1. First pass: nothing in the (empty) default remote, no champion, no service.
    proc, first = retrain(repo, "--reload-url", "http://127.0.0.1:9")
    assert proc.returncode == 0, proc.stderr
    assert first["pulled"] and first["pushed"]
    assert first["champion_before"] is None and first["champion_after"] == "1" and first["promoted"]
    assert "no service answering" in first["reload"]
    assert [s["step"] for s in first["steps"]] == ["pull", "repro", "push"]
    pushed = [p for p in (repo / ".dvc-storage").rglob("*") if p.is_file()]
    assert pushed, "dvc push wrote nothing to the default remote"

    name = first["registered_model"]
    extra = {"MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "PARAMS_FILE": str(repo / "params.yaml")}
    with running_gunicorn(tmp_path / "svc", f"models:/{name}@champion", token="generate", extra_env=extra) as server:
        url = server.base_url
        assert served_version(url) == "1"

        # 2. New data (another sample of the source), a gate it passes: v2 is promoted, but
        #    the service's token is wrong, so this pass fails at the reload and v1 keeps serving.
        set_param(repo, "sample_seed", 7)
        set_param(repo, "max_regression", 1.0)
        proc, _ = retrain(repo, "--no-pull", "--no-push", "--reload-url", url, token="cdk_000000000000_" + "w" * 43)
        assert proc.returncode == 1
        assert "reload" in proc.stderr and "401" in proc.stderr, proc.stderr
        assert served_version(url) == "1"

        # 3. Nothing new to train: repro is a no-op, yet the service is brought onto the champion.
        #    (This pass and the next run as the Prefect retrain flow: the same loop, the same summary.)
        proc, again = retrain(repo, "--no-pull", "--no-push", "--reload-url", url, token=server.token, flow=True)
        assert proc.returncode == 0, proc.stderr
        assert not again["promoted"] and again["champion_before"] == again["champion_after"] == "2"
        assert again["reload"] == f"reloaded: {url} serves version 2"
        assert served_version(url) == "2"

        # 4. New data that fails the gate (an impossible AUC floor): registered, not promoted, not served.
        set_param(repo, "sample_seed", 11)
        set_param(repo, "min_roc_auc", 0.99)
        proc, failed = retrain(repo, "--no-pull", "--no-push", "--reload-url", url, token=server.token, flow=True)
        assert proc.returncode == 0, proc.stderr
        assert failed["gate"]["decision"] == "failed" and failed["gate"]["version"] == 3
        assert not failed["promoted"] and failed["champion_after"] == "2"
        # Usually every worker already serves v2; a worker that was still reloading in the background is caught up.
        assert failed["reload"] in (f"{url} already serves version 2", f"reloaded: {url} serves version 2")
        assert served_version(url) == "2"


@pytest.mark.story(start=on_a_copy(retrain_story), minutes=4)
def test_retrain_loop_promotes_pushes_and_reloads(story: Future[None]) -> None:
    story.result()
