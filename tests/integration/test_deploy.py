"""`python -m src.deploy` against a REAL moto server (ECR, EC2, SSM) and real HTTP services.

Each test starts `moto_server` on a free port (tests/integration/conftest.py), creates
EC2 instances tagged like the production ones, pushes image manifests to ECR, and
runs the CLI as a subprocess exactly as the deploy workflow does. The smoke test
hits a real HTTP server on 127.0.0.1: a small stand-in whose health follows the
tag recorded in SSM (so a rollback really makes it healthy again), and, when the
public data is present, the real Flask app serving a real model.

moto's SSM does not execute the script: every command it receives "succeeds" at
once. The script itself is run under a real /bin/sh in tests/unit/test_deploy_parts.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from werkzeug.serving import make_server

from src.auth.store import create_key, set_user
from tests.conftest import ROOT
from tests.integration.conftest import sh
from tests.net import serving

pytestmark = pytest.mark.integration

REGION = "us-east-1"
REPO = "credit-default"
PARAM = "/credit-default/production/current-tag"
# Short waits: the stand-in answers at once, and a broken release should fail the test quickly.
FAST = ("--smoke-timeout", "2", "--poll-interval", "0.2", "--http-timeout", "5")


def client(name: str) -> Any:
    return boto3.client(name, region_name=REGION)


def deploy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI as the workflow runs it (AWS_ENDPOINT_URL and dummy credentials come from the moto fixture)."""
    return sh(ROOT, sys.executable, "-m", "src.deploy", *args, check=False, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The moto endpoint, with nothing from the developer's AWS config leaking in."""
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return moto_server


def launch(count: int = 2, env: str = "production", state: str = "running") -> list[str]:
    """EC2 instances tagged App=credit-default, Env=``env``, from an AMI moto ships."""
    ec2 = client("ec2")
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ids = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=ami, MinCount=count, MaxCount=count, InstanceType="t3.small",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "App", "Value": "credit-default"}, {"Key": "Env", "Value": env},
            {"Key": "Name", "Value": f"credit-default-{env}"}]}])["Instances"]]
    if state == "stopped":
        ec2.stop_instances(InstanceIds=ids)
    return ids


def push_image(tag: str) -> None:
    """What `docker push` leaves in ECR: a manifest under ``tag`` (distinct per tag)."""
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7023,
                           "digest": "sha256:" + hashlib.sha256(tag.encode()).hexdigest()},
                "layers": []}
    client("ecr").put_image(repositoryName=REPO, imageTag=tag, imageManifest=json.dumps(manifest))


def commands() -> list[dict[str, Any]]:
    """Every SSM command sent, oldest first."""
    return sorted(client("ssm").list_commands()["Commands"], key=lambda c: c["RequestedDateTime"])


def last_release() -> dict[str, Any]:
    return json.loads(client("ssm").get_parameter(Name=PARAM.replace("current-tag", "last-release"))
                      ["Parameter"]["Value"])


def image_in(command: dict[str, Any]) -> str:
    script = "\n".join(command["Parameters"]["commands"])
    return next(line.split("=", 1)[1] for line in script.splitlines() if line.startswith("IMAGE="))


# --- a stand-in service whose health depends on the tag SSM says is running -----------------------

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["limit_bal", "education", "age", "city"],
          "properties": {"limit_bal": {"type": "number", "minimum": 10000, "maximum": 1000000},
                         "education": {"type": "integer", "enum": [1, 2, 3, 4]},
                         "age": {"type": ["number", "null"], "minimum": 21, "maximum": 79},
                         "city": {"type": "string", "minLength": 1}}}


@dataclass
class StandIn:
    """Healthy when the tag the last SSM command installed is in ``healthy`` (the host a rolling release just
    replaced answers the smoke test); ``broken`` says how an unhealthy one misbehaves. ``bad_from``: from that
    prediction on (1-based), every tag misbehaves (a release that fails on a later host)."""

    healthy: set[str]
    broken: str = "not-ready"  # or "bad-prediction"
    bad_from: int | None = None
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    url: str = ""

    def is_healthy(self) -> bool:
        sent = commands()
        if not sent:
            return False
        predictions = sum(1 for method, _, _ in self.requests if method == "POST")
        if self.bad_from is not None and predictions >= self.bad_from and image_in(sent[-1]).endswith(":v2"):
            return False
        return image_in(sent[-1]).rsplit(":", 1)[1] in self.healthy


@contextmanager
def stand_in(healthy: set[str], broken: str = "not-ready", bad_from: int | None = None) -> Iterator[StandIn]:
    state = StandIn(healthy=healthy, broken=broken, bad_from=bad_from)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            state.requests.append(("GET", self.path, None))
            ok = state.is_healthy()
            if self.path == "/ready":
                if ok or state.broken != "not-ready":
                    self._send(200, {"status": "ready"})
                else:
                    self._send(503, {"status": "loading", "model_uri": "models:/x@champion"})
            elif self.path == "/api/v1/schema":
                self._send(200, SCHEMA)
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(("POST", self.path, body))
            applicant = body["applicants"][0]
            valid = set(applicant) == set(SCHEMA["properties"]) and 10000 <= applicant["limit_bal"] <= 1000000
            if self.path != "/api/v1/predict" or not valid:
                self._send(422, {"error": "invalid applicant"})
            elif state.is_healthy():
                self._send(200, {"request_id": "r1", "model": {"name": "m", "version": "3"}, "threshold": 0.3,
                                 "results": [{"probability_of_default": 0.21, "decision": "approve"}]})
            else:
                self._send(200, {"request_id": "r1", "model": {"name": "m", "version": "3"}, "threshold": 0.3,
                                 "results": [{"probability_of_default": 1.7, "decision": "approve"}]})

        def log_message(self, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        state.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield state


# --- ensure-registry ----------------------------------------------------------------------------------

def test_ensure_registry_creates_scanned_immutable_repository_idempotently(aws: str) -> None:
    first = deploy("ensure-registry")
    assert first.returncode == 0, first.stderr
    uri = first.stdout.strip()
    repo = client("ecr").describe_repositories(repositoryNames=[REPO])["repositories"][0]
    assert uri == repo["repositoryUri"] and uri.endswith(f"/{REPO}")
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True

    again = deploy("ensure-registry")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == uri
    assert len(client("ecr").describe_repositories()["repositories"]) == 1


def test_ensure_registry_fixes_a_repository_made_with_other_settings(aws: str) -> None:
    client("ecr").create_repository(repositoryName="hand-made", imageTagMutability="MUTABLE",
                                    imageScanningConfiguration={"scanOnPush": False})
    proc = deploy("ensure-registry", "--name", "hand-made")
    assert proc.returncode == 0, proc.stderr
    assert "imageTagMutability MUTABLE -> IMMUTABLE" in proc.stderr and "scanOnPush false -> true" in proc.stderr
    repo = client("ecr").describe_repositories(repositoryNames=["hand-made"])["repositories"][0]
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True


# --- release ------------------------------------------------------------------------------------------

def test_release_switches_every_instance_records_the_tag_and_smoke_tests(aws: str) -> None:
    instances = launch(2)
    launch(1, env="staging")  # another environment: must not be touched
    assert deploy("ensure-registry").returncode == 0
    push_image("abc123")
    with stand_in(healthy={"abc123"}) as svc:
        proc = deploy("release", "abc123", "--smoke-url", svc.url, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "released abc123" in proc.stdout

    assert client("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == "abc123"
    sent = commands()
    assert len(sent) == 2 and all(c["DocumentName"] == "AWS-RunShellScript" for c in sent)  # one per host
    cmd = sent[-1]
    # moto 5.2 adds every instance of the region to a command sent without Targets, so which
    # instances were targeted is read from the CLI's own record and log rather than from list_commands.
    assert set(instances) <= set(cmd["InstanceIds"])
    assert sorted(last_release()["instances"]) == sorted(instances)
    assert [line.split(": ")[-1] for line in proc.stderr.splitlines() if " now runs abc123" in line] == [
        f"{i} now runs abc123 ({n} of 2)" for n, i in enumerate(sorted(instances), 1)]
    assert proc.stdout.strip() == f"released abc123 to {', '.join(sorted(instances))} (previous: -)"
    uri = client("ecr").describe_repositories(repositoryNames=[REPO])["repositories"][0]["repositoryUri"]
    assert image_in(cmd) == f"{uri}:abc123"
    script = "\n".join(cmd["Parameters"]["commands"])
    assert "--restart unless-stopped -p 8000:8000" in script and "docker pull" in script
    # The smoke test really hit the server: readiness, the schema, then one valid prediction.
    paths = [(method, path) for method, path, _ in svc.requests]
    assert ("GET", "/ready") in paths and ("POST", "/api/v1/predict") in paths
    posted = next(body for method, _, body in svc.requests if method == "POST")
    assert set(posted["applicants"][0]) == set(SCHEMA["properties"])

    status = deploy("status")
    assert status.returncode == 0, status.stderr
    assert "current tag   abc123" in status.stdout
    assert f"last command  {cmd['CommandId']} Success" in status.stdout
    assert all(f"{i}" in status.stdout for i in instances) and status.stdout.count(" running ") == 2


@pytest.mark.parametrize("broken", ["not-ready", "bad-prediction"])
def test_failed_smoke_test_rolls_back_to_the_previous_tag(aws: str, broken: str) -> None:
    instances = launch(2)
    assert deploy("ensure-registry").returncode == 0
    push_image("v1")
    push_image("v2")
    with stand_in(healthy={"v1"}, broken=broken) as svc:
        assert deploy("release", "v1", "--smoke-url", svc.url, *FAST).returncode == 0
        proc = deploy("release", "v2", "--smoke-url", svc.url, *FAST)
    line = assert_one_line_error(proc, 1, "release of v2 failed and was rolled back to v1",
                                 "smoke test after rollback passed")
    assert ("/ready answered 503" if broken == "not-ready" else "probability_of_default 1.7") in line

    assert client("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == "v1"
    # v1 host by host; then v2 on the first host only, whose smoke test fails; it alone goes back to v1
    *installs, second, rollback = commands()
    assert [image_in(c).rsplit(":", 1)[1] for c in (*installs, second, rollback)] == ["v1", "v1", "v2", "v1"]
    record = last_release()
    assert (record["tag"], record["previous"], record["outcome"]) == ("v2", "v1", "rolled back")
    assert record["commands"] == [second["CommandId"], rollback["CommandId"]]
    assert sorted(record["instances"]) == sorted(instances)
    assert "rollback" in rollback["Comment"]
    assert f"rolling {sorted(instances)[0]} back to v1" in proc.stderr

    status = deploy("status")
    assert "current tag   v1" in status.stdout and "last release  v2 (rolled back; previous v1)" in status.stdout


def test_failed_first_release_has_nothing_to_roll_back_to(aws: str) -> None:
    launch(1)
    assert deploy("ensure-registry").returncode == 0
    push_image("v1")
    with stand_in(healthy=set()) as svc:
        proc = deploy("release", "v1", "--smoke-url", svc.url, *FAST)
    assert_one_line_error(proc, 1, "no previous tag", "left on v1")
    assert len(commands()) == 1


@pytest.mark.parametrize("setup", ["none", "other-env", "stopped"])
def test_no_running_instances_is_one_clear_line_exit_2(aws: str, setup: str) -> None:
    if setup == "other-env":
        launch(1, env="staging")
    elif setup == "stopped":
        launch(1, state="stopped")
    assert deploy("ensure-registry").returncode == 0
    push_image("v1")
    proc = deploy("release", "v1", "--smoke-url", "http://127.0.0.1:9")
    assert_one_line_error(proc, 2, "no running EC2 instances tagged App=credit-default and Env=production")
    assert commands() == []


def test_missing_repository_or_image_fails_before_touching_instances(aws: str) -> None:
    launch(1)
    proc = deploy("release", "v1", "--smoke-url", "http://127.0.0.1:9")
    assert_one_line_error(proc, 2, "ECR repository 'credit-default' does not exist", "ensure-registry")
    assert deploy("ensure-registry").returncode == 0
    proc = deploy("release", "nope", "--smoke-url", "http://127.0.0.1:9")
    assert_one_line_error(proc, 2, ":nope is not in ECR")
    assert commands() == []


def test_unreachable_aws_is_one_line_not_a_traceback(aws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    proc = deploy("status")
    assert_one_line_error(proc, 1, "http://127.0.0.1:9")


# --- the smoke test against the real service ----------------------------------------------------------

def test_release_smoke_tests_the_real_flask_service(aws: str, app: Any) -> None:
    """The smoke applicant built from the real /api/v1/schema is accepted and scored by the real model, with the
    score key the workflow passes as API_KEY (the service has credentials: without the key the smoke test fails,
    saying what to set)."""
    launch(1)
    assert deploy("ensure-registry").returncode == 0
    push_image("real0")
    push_image("real1")
    key, _ = create_key(app.extensions["credit_credentials"].path, "smoke", "score")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        keyless = deploy("release", "real0", "--smoke-url", url, *FAST)
        proc = deploy("release", "real1", "--smoke-url", url, *FAST, env={"API_KEY": key})
    finally:
        server.shutdown()
    assert_one_line_error(keyless, 1, "answered 401", "set API_KEY to a key with the score scope")
    assert proc.returncode == 0, proc.stderr
    assert "smoke test http://127.0.0.1" in proc.stderr and "passed: model" in proc.stderr
    assert client("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == "real1"


# --- the service's secrets in SSM ----------------------------------------------------------------------

def test_secrets_are_pushed_as_securestrings_and_synced_to_every_instance(aws: str, tmp_path: Any) -> None:
    instances = launch(2)
    nothing = deploy("secrets", "push")
    assert_one_line_error(nothing, 2, "nothing to push")
    empty = tmp_path / "empty.json"
    empty.write_text('{"version": 1, "keys": {}, "users": {}}')
    assert_one_line_error(deploy("secrets", "push", "--credentials", str(empty)), 1, "holds no live key")
    assert "MISSING" in deploy("secrets", "status").stdout

    file = tmp_path / "credentials.json"
    create_key(file, "lender", "score")
    set_user(file, "officer", "a long enough passphrase", "score")
    proc = deploy("secrets", "push", "--credentials", str(file), "--new-secret-key")
    assert proc.returncode == 0, proc.stderr
    ssm = client("ssm")
    stored = ssm.get_parameter(Name="/credit-default/production/credentials", WithDecryption=True)["Parameter"]
    assert stored["Type"] == "SecureString" and stored["Value"] == file.read_text()
    key = ssm.get_parameter(Name="/credit-default/production/secret-key", WithDecryption=True)["Parameter"]
    assert key["Type"] == "SecureString" and len(key["Value"]) == 64
    status = deploy("secrets", "status").stdout
    assert "credentials present" in status and "secret-key present" in status

    # the hosts' smoke key: a live key of those credentials, allowed to score; checked against SSM's copy
    metrics_key, _ = create_key(file, "prometheus", "metrics")
    assert_one_line_error(deploy("secrets", "push", "--smoke-key", env={"API_KEY": ""}), 2, "API_KEY, which is not set")
    assert_one_line_error(deploy("secrets", "push", "--smoke-key", env={"API_KEY": metrics_key}), 1,
                          "is not a live key of the credentials the hosts use")  # (not pushed yet)
    assert_one_line_error(deploy("secrets", "push", "--credentials", str(file), "--smoke-key",
                                 env={"API_KEY": metrics_key}), 1, "scope metrics) may not score")
    assert "credentials present" in status and "smoke-key MISSING" in deploy("secrets", "status").stdout
    smoke_key, _ = create_key(file, "deploy smoke test", "score")
    assert deploy("secrets", "push", "--credentials", str(file)).returncode == 0
    proc = deploy("secrets", "push", "--smoke-key", env={"API_KEY": smoke_key})
    assert proc.returncode == 0, proc.stderr
    stored = ssm.get_parameter(Name="/credit-default/production/smoke-key", WithDecryption=True)["Parameter"]
    assert stored["Type"] == "SecureString" and stored["Value"] == smoke_key
    assert smoke_key not in proc.stdout + proc.stderr

    synced = deploy("secrets", "sync")
    assert synced.returncode == 0, synced.stderr
    [cmd] = commands()
    script = "\n".join(cmd["Parameters"]["commands"])
    assert "--name /credit-default/production/credentials" in script and "docker" not in script
    assert set(instances) <= set(cmd["InstanceIds"])


# --- a rolling release behind the load balancer ---------------------------------------------------------

def target_group(instances: list[str], name: str = "credit-default-production") -> str:
    """A target group of the default VPC (what infra/terraform makes) with ``instances`` registered."""
    vpc = client("ec2").describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    elb = client("elbv2")
    arn = elb.create_target_group(Name=name, Protocol="HTTP", Port=8000, VpcId=vpc,
                                  HealthCheckPath="/ready", TargetType="instance")["TargetGroups"][0][
        "TargetGroupArn"]
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": i} for i in instances])
    return arn


@contextmanager
def watching(arn: str, instances: list[str]) -> Iterator[list[set[str]]]:
    """Samples, every few milliseconds while the block runs, which instances are not healthy in the group."""
    samples: list[set[str]] = []
    stop = threading.Event()

    def watch() -> None:
        elb = client("elbv2")
        while not stop.is_set():
            health = elb.describe_target_health(TargetGroupArn=arn, Targets=[{"Id": i} for i in instances])
            samples.append({d["Target"]["Id"] for d in health["TargetHealthDescriptions"]
                            if d["TargetHealth"]["State"] != "healthy"})
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(10)


def steps(stderr: str) -> list[tuple[str, str]]:
    """(instance, what) for each host step the CLI logged, in order."""
    found = []
    for line in stderr.splitlines():
        match = re.search(r"(i-[0-9a-f]+): (deregistered|out of service|registered again|back in service)", line) \
            or re.search(r"(i-[0-9a-f]+) (now runs) ", line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def push_smoke_key(folder: Path) -> None:
    """Credentials with a score key in SSM, and that key as the hosts' smoke key (a balanced release needs it)."""
    key, _ = create_key(folder / "credentials.json", "deploy smoke test", "score")
    proc = deploy("secrets", "push", "--credentials", str(folder / "credentials.json"), "--smoke-key",
                  env={"API_KEY": key})
    assert proc.returncode == 0, proc.stderr


def test_rolling_release_takes_one_host_out_of_the_balancer_at_a_time(aws: str, tmp_path: Path) -> None:
    instances = sorted(launch(3))
    arn = target_group(instances)
    push_smoke_key(tmp_path)
    assert deploy("ensure-registry").returncode == 0
    push_image("v1")
    with stand_in(healthy={"v1"}) as svc, watching(arn, instances) as samples:
        proc = deploy("release", "v1", "--smoke-url", svc.url, "--target-group-arn", arn, *FAST)
    assert proc.returncode == 0, proc.stderr
    # per host, in instance order: out (drained), replaced, back (healthy), smoke-tested; then the next host
    expected = [(i, what) for i in instances for what in
                ("deregistered", "out of service", "registered again", "back in service", "now runs")]
    assert steps(proc.stderr) == expected
    assert max(len(s) for s in samples) == 1, "two hosts out of service at once"
    assert {i for s in samples for i in s} == set(instances), "the watcher saw every host leave once"
    health = client("elbv2").describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    assert sorted(d["Target"]["Id"] for d in health if d["TargetHealth"]["State"] == "healthy") == instances
    assert len(commands()) == 3  # one SSM command per host
    script = "\n".join(commands()[0]["Parameters"]["commands"])  # each smoke-tests its container before traffic
    assert "--name /credit-default/production/smoke-key" in script and "python -m src.deploy.smoke" in script


def test_a_rollout_failing_on_the_second_host_returns_both_changed_hosts(aws: str, tmp_path: Path) -> None:
    instances = sorted(launch(3))
    arn = target_group(instances)
    push_smoke_key(tmp_path)
    assert deploy("ensure-registry").returncode == 0
    push_image("v1")
    push_image("v2")
    with stand_in(healthy={"v1", "v2"}, broken="bad-prediction") as svc:
        assert deploy("release", "v1", "--smoke-url", svc.url, "--target-group-arn", arn, *FAST).returncode == 0
        svc.bad_from = len([r for r in svc.requests if r[0] == "POST"]) + 2  # v2's second host misbehaves
        with watching(arn, instances) as samples:
            proc = deploy("release", "v2", "--smoke-url", svc.url, "--target-group-arn", arn, *FAST)
    line = assert_one_line_error(proc, 1, "release of v2 failed and was rolled back to v1", instances[1])
    assert "probability_of_default 1.7" in line
    first, second, third = instances
    assert steps(proc.stderr) == [
        (first, "deregistered"), (first, "out of service"), (first, "registered again"),
        (first, "back in service"), (first, "now runs"),
        (second, "deregistered"), (second, "out of service"), (second, "registered again"),
        (second, "back in service"),  # ... and its smoke test fails: back to v1, the last changed first
        (second, "deregistered"), (second, "out of service"), (second, "registered again"),
        (second, "back in service"),
        (first, "deregistered"), (first, "out of service"), (first, "registered again"), (first, "back in service")]
    assert third not in {i for s in samples for i in s}  # never touched
    assert max(len(s) for s in samples) == 1
    tags = [image_in(c).rsplit(":", 1)[1] for c in commands()]
    assert tags == ["v1", "v1", "v1", "v2", "v2", "v1", "v1"]
    assert client("ssm").get_parameter(Name=PARAM)["Parameter"]["Value"] == "v1"
    health = client("elbv2").describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
    assert all(d["TargetHealth"]["State"] == "healthy" for d in health) and len(health) == 3


def test_a_release_through_an_unknown_or_incomplete_target_group_changes_nothing(aws: str,
                                                                                 tmp_path: Path) -> None:
    instances = sorted(launch(2))
    arn = target_group(instances[:1])
    assert deploy("ensure-registry").returncode == 0
    push_image("v1")
    complete = target_group(instances, "credit-default-complete")
    # no smoke key in SSM: no host could be tested before it takes traffic again
    proc = deploy("release", "v1", "--smoke-url", "http://127.0.0.1:9", "--target-group-arn", complete, *FAST)
    assert_one_line_error(proc, 2, "no /credit-default/production/smoke-key in SSM", "secrets push --smoke-key")
    push_smoke_key(tmp_path)
    proc = deploy("release", "v1", "--smoke-url", "http://127.0.0.1:9", "--target-group-arn", arn, *FAST)
    assert_one_line_error(proc, 2, f"instance(s) {instances[1]} are not in target group")
    missing = arn.replace("credit-default-production", "nope")
    proc = deploy("release", "v1", "--smoke-url", "http://127.0.0.1:9", "--target-group-arn", missing, *FAST)
    assert_one_line_error(proc, 2, "no target group")
    assert commands() == []
