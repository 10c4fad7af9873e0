"""Parts of src.deploy that the moto server cannot exercise (tests/integration/test_deploy.py covers the rest).

- The instance-side release script, run by a real /bin/sh (dash on Debian, as on Ubuntu
  instances) against stand-in `docker` and `aws` commands that record their arguments.
- SSM command failures and timeouts: moto reports every command as Success at once, so
  ``wait_for_command`` is driven by a scripted client returning what real SSM returns.
- The smoke-test applicant, built from the real /api/v1/schema of every dataset profile,
  must pass the service's own validator.
- deploy settings, CLI flag overrides, and the retrain workflow's "new champion?" check.
"""

from __future__ import annotations

import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from botocore.exceptions import ClientError
from mlflow import MlflowClient

from flask_api.validation import applicant_json_schema, validate_applicants
from src.config import ConfigError, DeploySettings, build_profile, deploy_settings
from src.deploy import champion, cli, fleet, release
from src.deploy.errors import DeployError
from src.deploy.smoke import check_prediction, example_applicant
from src.modeling import registry
from tests.conftest import ALL_DATASETS, ROOT, TrainedProject, load_params
from tests.net import free_port

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/credit-default"

# A stand-in docker: logs each call; `inspect` reports the running container's image from a file;
# `pull` of a tag containing "missing" fails like a real pull of an unknown tag; `exec` (the smoke test in
# the new container) records the API_KEY it was handed and fails while $FAKE/smoke-fails exists; `cp` out of
# the container fails while $FAKE/old-image exists (an image without the smoke test module).
FAKE_DOCKER = """#!/bin/sh
echo "docker $*" >> "$CALLS"
[ "$1" = run ] && echo "${SECRET_KEY:-}" > "$FAKE/run-secret-key"
case "$1" in
  inspect) [ -f "$FAKE/running" ] && cat "$FAKE/running" && exit 0; exit 1 ;;
  pull) case "$2" in *missing*) echo "manifest unknown" >&2; exit 1 ;; esac ;;
  run) for last; do :; done; echo "$last" > "$FAKE/running" ;;
  rm) rm -f "$FAKE/running" ;;
  cp) [ -f "$FAKE/old-image" ] && exit 1 ;;
  exec) echo "${API_KEY:-}" > "$FAKE/exec-api-key"
        [ -f "$FAKE/smoke-fails" ] && echo "smoke test http://127.0.0.1:8000: /ready answered 503" >&2 && exit 1 ;;
esac
exit 0
"""
# A stand-in aws: `ssm get-parameter --name N` prints $FAKE/ssm/<last part of N> or fails like SSM.
FAKE_AWS = """#!/bin/sh
echo "aws $*" >> "$CALLS"
if [ "$1" = ssm ]; then
  for arg; do [ "$prev" = --name ] && name=$arg; prev=$arg; done
  [ -f "$FAKE/ssm/${name##*/}" ] && cat "$FAKE/ssm/${name##*/}" && exit 0
  echo "An error occurred (ParameterNotFound) when calling the GetParameter operation" >&2; exit 254
fi
echo password
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def instance(tmp_path: Path) -> dict[str, Any]:
    """A pretend instance: PATH with fake docker/aws, a state dir, an env file location."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "docker", FAKE_DOCKER)
    _executable(bin_dir / "aws", FAKE_AWS)
    cfg = DeploySettings(state_dir=str(tmp_path / "state dir"), env_file=str(tmp_path / "app.env"))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(tmp_path / "calls"), "FAKE": str(tmp_path)}
    return {"cfg": cfg, "env": env, "root": tmp_path}


def run_script(instance: dict[str, Any], tag: str) -> subprocess.CompletedProcess[str]:
    lines = fleet.release_script(f"{IMAGE}:{tag}", tag, instance["cfg"], "eu-west-1")
    return subprocess.run(["/bin/sh", "-c", "\n".join(lines)], env=instance["env"], capture_output=True, text=True,
                          timeout=30, check=False)


def calls(instance: dict[str, Any]) -> list[str]:
    path = Path(instance["env"]["CALLS"])
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def test_release_script_first_install_then_upgrade_records_tags(instance: dict[str, Any]) -> None:
    state = Path(instance["cfg"].state_dir)
    proc = run_script(instance, "v1")
    assert proc.returncode == 0, proc.stderr
    log = calls(instance)
    # The two sides of `aws ecr get-login-password | docker login` run at once: either may log first.
    registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert sorted(log[:2]) == ["aws ecr get-login-password --region eu-west-1",
                               f"docker login --username AWS --password-stdin {registry}"]
    assert log[2] == f"docker pull {IMAGE}:v1"
    spool, auth = state / "spool", state / "auth"
    # no secrets in SSM yet: no credentials file, no SECRET_KEY (the container will refuse to start open)
    [run] = [c for c in log if c.startswith("docker run")]
    assert run == (f"docker run -d --name credit-default --restart unless-stopped -p 8000:8000 "
                       f"-v {spool}:/app/var/spool -e PREDLOG_SPOOL_DIR=/app/var/spool "
                       f"-v {auth}:/app/auth:ro -e AUTH_FILE=/app/auth/credentials.json {IMAGE}:v1")
    assert "no /credit-default/production/credentials in SSM" in proc.stderr
    assert not (auth / "credentials.json").exists() and not list(auth.iterdir())
    assert spool.is_dir() and spool.stat().st_uid == fleet.CONTAINER_UID  # the image's user writes the spool
    assert (state / "current-tag").read_text() == "v1\n"
    assert not (state / "previous-tag").exists()

    Path(instance["cfg"].env_file).write_text("LOG_LEVEL=debug\n")
    ssm = instance["root"] / "ssm"
    ssm.mkdir()
    (ssm / "credentials").write_text('{"version": 1}')
    (ssm / "secret-key").write_text("s3cret-from-ssm")
    proc = run_script(instance, "v2")
    assert proc.returncode == 0, proc.stderr
    log = calls(instance)
    assert "aws ssm get-parameter --region eu-west-1 --with-decryption --query Parameter.Value --output text " \
           "--name /credit-default/production/credentials" in log
    assert (auth / "credentials.json").read_text().strip() == '{"version": 1}'
    assert (auth / "credentials.json").stat().st_mode & 0o777 == 0o400
    assert (auth / "credentials.json").stat().st_uid == fleet.CONTAINER_UID
    [run] = [c for c in log if c.startswith("docker run")]
    assert "-e SECRET_KEY " in run and "s3cret-from-ssm" not in " ".join(log)  # never on a command line
    assert (instance["root"] / "run-secret-key").read_text().strip() == "s3cret-from-ssm"
    # stopped with time for gunicorn's graceful stop and the shipper's drain, not docker's 10 s
    assert log.index("docker stop -t 75 credit-default") < log.index("docker rm credit-default") < log.index(run)
    assert run.endswith(f"-e SECRET_KEY --env-file {instance['cfg'].env_file} {IMAGE}:v2")
    assert (state / "previous-tag").read_text() == "v1\n"
    assert (state / "current-tag").read_text() == "v2\n"
    assert f"now running {IMAGE}:v2 (previously: {IMAGE}:v1)" in proc.stdout


def test_release_script_smoke_tests_the_new_container_on_the_host_with_the_key_from_ssm(
        instance: dict[str, Any]) -> None:
    """With the smoke key in SSM the new container is smoke-tested inside, on 127.0.0.1; a failure fails the
    script (so SSM reports it and the release rolls back); the key never appears on a command line."""
    ssm = instance["root"] / "ssm"
    ssm.mkdir()
    (ssm / "smoke-key").write_text("cdk_0123456789ab_smoke-secret")
    proc = run_script(instance, "v1")
    assert proc.returncode == 0, proc.stderr
    log = calls(instance)
    assert log[-4].startswith("docker run -d --name credit-default") and log[-4].endswith(f"{IMAGE}:v1")
    assert "--name /credit-default/production/smoke-key" in log[-3]
    assert log[-2] == "docker cp credit-default:/app/src/deploy/smoke.py -"
    assert log[-1] == ("docker exec -e API_KEY credit-default python -m src.deploy.smoke http://127.0.0.1:8000 "
                       "--ready-timeout 180 --http-timeout 10")
    assert (instance["root"] / "exec-api-key").read_text().strip() == "cdk_0123456789ab_smoke-secret"
    assert "smoke-secret" not in " ".join(log)
    assert "smoke test passed on the host" in proc.stdout

    (instance["root"] / "smoke-fails").touch()
    proc = run_script(instance, "v2")
    assert proc.returncode != 0 and "/ready answered 503" in proc.stderr
    assert "smoke test passed" not in proc.stdout
    assert calls(instance)[-1].startswith("docker exec ")
    assert (Path(instance["cfg"].state_dir) / "current-tag").read_text() == "v2\n"  # what runs, tested or not

    # a rollback to an image built before it had the smoke test: skipped, saying so, not failed
    (instance["root"] / "old-image").touch()
    proc = run_script(instance, "v0")
    assert proc.returncode == 0, proc.stderr
    assert "this image has no smoke test" in proc.stderr and not calls(instance)[-1].startswith("docker exec")


def test_release_script_without_a_smoke_key_says_it_skips_the_host_smoke_test(instance: dict[str, Any]) -> None:
    proc = run_script(instance, "v1")
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith("docker exec") for c in calls(instance))
    assert "no /credit-default/production/smoke-key in SSM: no smoke test on the host" in proc.stderr


def test_smoke_cli_fails_in_one_line_naming_the_url() -> None:
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "src.deploy.smoke", f"http://127.0.0.1:{port}",
                           "--ready-timeout", "0.5", "--http-timeout", "0.5"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert f"smoke test http://127.0.0.1:{port}: /ready answered no connection for 0.5 s" in error


def test_release_script_stops_before_touching_the_container_when_the_pull_fails(instance: dict[str, Any]) -> None:
    assert run_script(instance, "v1").returncode == 0
    calls(instance)
    proc = run_script(instance, "missing")
    assert proc.returncode != 0
    assert not any(c.startswith(("docker stop", "docker rm", "docker run")) for c in calls(instance))
    assert (Path(instance["cfg"].state_dir) / "current-tag").read_text() == "v1\n"


def test_release_script_quotes_what_it_is_given(instance: dict[str, Any]) -> None:
    cfg = instance["cfg"].model_copy(update={"container_name": "name with 'quote'"})
    lines = fleet.release_script(f"{IMAGE}:v1", "v1; rm -rf /", cfg, "eu-west-1")
    proc = subprocess.run(["/bin/sh", "-c", "\n".join(lines)], env=instance["env"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (Path(cfg.state_dir) / "current-tag").read_text() == "v1; rm -rf /\n"
    assert "docker stop -t 75 name with 'quote'" in calls(instance)


# --- waiting for SSM ---------------------------------------------------------------------------------

class ScriptedSsm:
    """Answers get_command_invocation from a per-instance list of statuses (last one repeats)."""

    def __init__(self, statuses: dict[str, list[str]]) -> None:
        self.statuses = statuses

    def get_command_invocation(self, CommandId: str, InstanceId: str) -> dict[str, Any]:
        queue = self.statuses[InstanceId]
        status = queue.pop(0) if len(queue) > 1 else queue[0]
        if status == "missing":
            raise ClientError({"Error": {"Code": "InvocationDoesNotExist", "Message": ""}}, "GetCommandInvocation")
        return {"Status": status, "StandardOutputContent": "pulling",
                "StandardErrorContent": "Error response from daemon: manifest unknown" if status == "Failed" else ""}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


INSTANCES = [fleet.Instance("i-1", "running", None, "10.0.0.1"), fleet.Instance("i-2", "running", None, "10.0.0.2")]


def test_wait_for_command_tolerates_not_yet_registered_invocations() -> None:
    ssm = ScriptedSsm({"i-1": ["missing", "Pending", "InProgress", "Success"], "i-2": ["InProgress", "Success"]})
    clock = FakeClock()
    result = fleet.wait_for_command(ssm, "c1", INSTANCES, timeout=60, poll_interval=1, sleep=clock.sleep, clock=clock)
    assert [(r.instance_id, r.status) for r in result] == [("i-1", "Success"), ("i-2", "Success")]


def test_wait_for_command_names_the_failed_instance_and_its_error() -> None:
    ssm = ScriptedSsm({"i-1": ["Success"], "i-2": ["InProgress", "Failed"]})
    clock = FakeClock()
    with pytest.raises(DeployError, match=r"failed on 1 of 2 instance\(s\): i-2: Failed \(.*manifest unknown\)"):
        fleet.wait_for_command(ssm, "c1", INSTANCES, timeout=60, poll_interval=1, sleep=clock.sleep, clock=clock)


def test_wait_for_command_gives_up_after_the_timeout_naming_the_pending_instances() -> None:
    ssm = ScriptedSsm({"i-1": ["Success"], "i-2": ["InProgress"]})
    clock = FakeClock()
    with pytest.raises(DeployError, match=r"still running after 30 s on i-2 "):
        fleet.wait_for_command(ssm, "c1", INSTANCES, timeout=30, poll_interval=5, sleep=clock.sleep, clock=clock)
    assert clock.now == 30


# --- smoke-test applicant and answers ------------------------------------------------------------------

@pytest.mark.parametrize("dataset", ALL_DATASETS)
def test_smoke_applicant_from_the_published_schema_passes_the_services_validator(dataset: str) -> None:
    profile = build_profile(dataset, load_params()["profiles"][dataset])
    applicant = example_applicant(applicant_json_schema(profile))
    rows, problems = validate_applicants([applicant], profile)
    assert problems == [] and len(rows) == 1


@pytest.mark.parametrize(("status", "body", "problem"), [
    (200, {"results": [{"probability_of_default": 0.2, "decision": "refer"}]}, None),
    (503, {"error": "no model loaded yet"}, "answered 503: no model loaded yet"),
    (0, "Connection refused", "answered no connection"),
    (200, {"results": []}, "without one result"),
    (200, {"results": [{"probability_of_default": "0.2", "decision": "approve"}]}, "not a number in [0, 1]"),
    (200, {"results": [{"probability_of_default": 0.2, "decision": "maybe"}]}, "decision 'maybe'"),
])
def test_check_prediction(status: int, body: Any, problem: str | None) -> None:
    found = check_prediction(status, body)
    assert found == problem if problem is None else problem in found


# --- settings and CLI ----------------------------------------------------------------------------------

def test_deploy_settings_defaults_overrides_and_errors() -> None:
    assert deploy_settings(None) == DeploySettings()
    assert deploy_settings(load_params()["deploy"]).parameter("current-tag") == "/credit-default/production/current-tag"
    with pytest.raises(ConfigError, match=re.escape("unknown key 'deploy.regoin' (did you mean 'deploy.region'?)")):
        deploy_settings({"regoin": "x"})
    with pytest.raises(ConfigError, match=re.escape("'deploy.port' is 70000; it must be a TCP port")):
        deploy_settings({"port": 70000})
    with pytest.raises(ConfigError, match=re.escape("'deploy.smoke_timeout' is 'soon'; it must be a number")):
        deploy_settings({"smoke_timeout": "soon"})
    with pytest.raises(ConfigError, match=re.escape("'deploy.parameter_prefix' is 'credit'; it must start with '/'")):
        deploy_settings({"parameter_prefix": "credit"})


def test_cli_flags_override_params_before_or_after_the_command() -> None:
    parser = cli.build_parser()
    before = cli.effective_settings(parser.parse_args(["--env", "staging", "--region", "eu-west-1", "status"]))
    after = cli.effective_settings(parser.parse_args(["release", "abc", "--env", "staging", "--port", "9000",
                                                      "--smoke-url", "http://lb:80/"]))
    assert (before.env, before.region) == ("staging", "eu-west-1")
    assert (after.env, after.port, after.smoke_url, after.region) == ("staging", 9000, "http://lb:80/",
                                                                      load_params()["deploy"]["region"])
    with pytest.raises(SystemExit):
        parser.parse_args(["release"])  # TAG is required


@pytest.mark.parametrize(("after", "before", "promoted"), [
    ("4", "3", True),    # the gate promoted v4 over v3
    ("1", None, True),   # the first champion
    ("3", "3", False),   # a failed gate, or nothing registered: the alias did not move
    (None, None, False),  # nothing registered at all
])
def test_champion_promoted(after: str | None, before: str | None, promoted: bool) -> None:
    out = champion.outputs("m", after, before)
    assert out["promoted"] == str(promoted).lower()
    if promoted:
        assert out["model_uri"] == f"models:/m/{after}"
    else:
        assert set(out) == {"promoted"}


def test_champion_and_promoted_commands_ask_the_registry(trained_project: TrainedProject, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A real SQLite registry: before the first model no champion; then v1 is one, and promoted since ''."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump(trained_project.settings.raw), encoding="utf-8")
        cli.main(["champion", "--params", str(params)])
        assert capsys.readouterr().out.splitlines() == ["version="]
        client = MlflowClient(uri, uri)
        name = trained_project.settings.registered_model_name
        client.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
        registry.import_exported(client, trained_project.model_dir, name, "champion", "first")
        cli.main(["champion", "--params", str(params)])
        assert capsys.readouterr().out.splitlines() == ["version=1"]
        cli.main(["promoted", "--params", str(params), "--before", ""])
        assert capsys.readouterr().out.splitlines() == [
            "promoted=true", f"model={name}", "version=1", f"model_uri=models:/{name}/1"]
        cli.main(["promoted", "--params", str(params), "--before", "1"])
        assert capsys.readouterr().out.splitlines() == ["promoted=false"]
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])



# --- one host of a rolling release ---------------------------------------------------------------

class RecordingElb:
    """A target group in memory that logs what is done to it."""

    def __init__(self, log: list[str]) -> None:
        self.log, self.registered = log, {"i-1"}

    def describe_target_health(self, TargetGroupArn: str, Targets: list[dict[str, str]]) -> dict[str, Any]:
        state = "healthy" if Targets[0]["Id"] in self.registered else "unused"
        return {"TargetHealthDescriptions": [{"Target": Targets[0], "TargetHealth": {"State": state}}]}

    def deregister_targets(self, TargetGroupArn: str, Targets: list[dict[str, str]]) -> None:
        self.registered.discard(Targets[0]["Id"])
        self.log.append("out")

    def register_targets(self, TargetGroupArn: str, Targets: list[dict[str, str]]) -> None:
        self.registered.add(Targets[0]["Id"])
        self.log.append("in")


class RecordingSsm:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def send_command(self, **kwargs: Any) -> dict[str, Any]:
        self.log.append("container replaced")
        return {"Command": {"CommandId": "c-1"}}

    def get_command_invocation(self, CommandId: str, InstanceId: str) -> dict[str, Any]:
        return {"Status": "Success"}


def test_a_host_smoke_tested_on_its_own_address_takes_traffic_only_after_passing() -> None:
    """Without a balancer URL the smoke test reaches the host itself: it runs before the host rejoins the group,
    so a host that fails it never gets the balancer's traffic (and a failure leaves it out)."""
    log: list[str] = []
    aws = release.Aws(ec2=None, ecr=None, ssm=RecordingSsm(log), elb=RecordingElb(log))
    cfg = DeploySettings(target_group_arn="arn:tg", poll_interval=0.01)
    host = fleet.Instance(id="i-1", state="running", public_ip="10.0.0.1", private_ip=None)
    release.switch(aws, cfg, host, "repo", "v2", "test", lambda _s: None, lambda: log.append("smoke test"))
    assert log == ["out", "container replaced", "smoke test", "in"]

    log.clear()

    def failing() -> None:
        raise DeployError("smoke test failed")

    with pytest.raises(DeployError):
        release.switch(aws, cfg, host, "repo", "v3", "test", lambda _s: None, failing)
    assert log == ["out", "container replaced"] and "i-1" not in aws.elb.registered
