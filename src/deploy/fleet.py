"""The EC2 instances that run the service, and SSM Run Command on them.

Instances are found by tag (App=<app>, Env=<env>) rather than by id, so Terraform
or an auto-scaling group may replace them without touching the workflows; SSM
Run Command needs no SSH key, no open port 22 and leaves an audit trail in AWS.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from src.config import DeploySettings
from src.deploy import secrets
from src.deploy.errors import DeployError, MissingResource

log = logging.getLogger(__name__)

DOCUMENT = "AWS-RunShellScript"
RUNNING_STATES = ("Pending", "InProgress", "Delayed")
# Output kept from a failed invocation in the error message: enough to see the failing command.
OUTPUT_TAIL = 600
# The prediction log's spool lives on the host (<state_dir>/spool), so decisions a replaced container
# answered but had not shipped are shipped by the next one. Owned by the image's user (Dockerfile: USER).
CONTAINER_UID = 10001
SPOOL_IN_CONTAINER = "/app/var/spool"
# `docker stop` waits this long before SIGKILL: gunicorn's graceful timeout (30 s), then the shipper's
# drain of what the workers left (up to 30 s), plus a margin. (docker's default, 10 s, cut both short.)
STOP_SECONDS = 75


@dataclass(frozen=True)
class Instance:
    id: str
    state: str
    public_ip: str | None
    private_ip: str | None
    name: str | None = None

    @property
    def address(self) -> str | None:
        """Where the service answers: the public IP when there is one (a runner outside the VPC needs it)."""
        return self.public_ip or self.private_ip


@dataclass(frozen=True)
class Invocation:
    instance_id: str
    status: str
    stdout: str = ""
    stderr: str = ""


def find_instances(ec2: Any, app: str, env: str, states: Sequence[str] | None = ("running",)) -> list[Instance]:
    """Instances tagged App=<app> and Env=<env> (in ``states``; None = any state), sorted by id."""
    filters = [{"Name": "tag:App", "Values": [app]}, {"Name": "tag:Env", "Values": [env]}]
    if states:
        filters.append({"Name": "instance-state-name", "Values": list(states)})
    found = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                found.append(Instance(id=inst["InstanceId"], state=inst["State"]["Name"],
                                      public_ip=inst.get("PublicIpAddress") or None,
                                      private_ip=inst.get("PrivateIpAddress") or None, name=tags.get("Name")))
    return sorted(found, key=lambda i: i.id)


def require_instances(ec2: Any, app: str, env: str) -> list[Instance]:
    """The running instances to release to; none is a configuration problem, reported in one line."""
    instances = find_instances(ec2, app, env)
    if not instances:
        raise MissingResource(f"no running EC2 instances tagged App={app} and Env={env} in this region "
                              "(check deploy.app / deploy.env / deploy.region, or --app/--env/--region)")
    return instances


def release_script(image: str, tag: str, cfg: DeploySettings, region: str) -> list[str]:
    """Shell lines run on an instance: pull ``image``, replace the container, record the tags, smoke-test it.

    POSIX sh only (AWS-RunShellScript runs /bin/sh, which is dash on Ubuntu). The
    previous tag is written to a file on the instance for someone logged in there;
    the SSM parameter written by :mod:`src.deploy.release` is what rollback trusts.
    """
    q = shlex.quote
    name, state, spool = q(cfg.container_name), q(cfg.state_dir), q(f"{cfg.state_dir.rstrip('/')}/spool")
    lines = [
        "set -eu",
        f"IMAGE={q(image)}",
        f"mkdir -p {state} {spool}",
        f"chown {CONTAINER_UID}:{CONTAINER_UID} {spool}",
    ]
    if ".dkr.ecr." in image:  # the instance profile's ECR read access, exchanged for a docker login
        lines.append(f'aws ecr get-login-password --region {q(region)} '
                     f'| docker login --username AWS --password-stdin "${{IMAGE%%/*}}"')
    run = (f"docker run -d --name {name} --restart unless-stopped "
           f"-p {cfg.port}:{cfg.container_port} -v {spool}:{SPOOL_IN_CONTAINER} "
           f"-e PREDLOG_SPOOL_DIR={SPOOL_IN_CONTAINER} {secrets.container_args(cfg)}")
    lines += [
        'docker pull "$IMAGE"',
        *secrets.fetch_lines(cfg, region),  # the credentials file and SECRET_KEY from SSM (src/deploy/secrets.py)
        f"PREVIOUS=$(docker inspect --format '{{{{.Config.Image}}}}' {name} 2>/dev/null || true)",
        f'if [ -n "$PREVIOUS" ]; then echo "${{PREVIOUS##*:}}" > {state}/previous-tag; fi',
        f"docker stop -t {STOP_SECONDS} {name} >/dev/null 2>&1 || true",
        f"docker rm {name} >/dev/null 2>&1 || true",
        f"if [ -f {q(cfg.env_file)} ]; then {run} --env-file {q(cfg.env_file)} \"$IMAGE\"; "
        f'else {run} "$IMAGE"; fi',
        f"echo {q(tag)} > {state}/current-tag",
        'echo "now running $IMAGE (previously: ${PREVIOUS:-none})"',
        *secrets.smoke_lines(cfg, region),  # on 127.0.0.1, before the host takes traffic again
    ]
    return lines


def send_script(ssm: Any, instances: Sequence[Instance], lines: list[str], comment: str, timeout: float) -> str:
    """Start the script on every instance at once; returns the SSM command id."""
    resp = ssm.send_command(
        InstanceIds=[i.id for i in instances],
        DocumentName=DOCUMENT,
        Comment=comment[:100],  # SSM's limit
        TimeoutSeconds=max(30, int(timeout)),
        Parameters={"commands": lines, "executionTimeout": [str(max(30, int(timeout)))]},
    )
    command_id = resp["Command"]["CommandId"]
    log.info("SSM command %s (%s) sent to %s", command_id, comment, ", ".join(i.id for i in instances))
    return command_id


def _invocation(ssm: Any, command_id: str, instance_id: str) -> Invocation | None:
    try:
        resp = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    except ClientError as exc:
        # Right after send_command the invocation may not be registered yet.
        if exc.response.get("Error", {}).get("Code") == "InvocationDoesNotExist":
            return None
        raise
    return Invocation(instance_id=instance_id, status=resp.get("Status", "Pending"),
                      stdout=resp.get("StandardOutputContent", "") or "",
                      stderr=resp.get("StandardErrorContent", "") or "")


def wait_for_command(ssm: Any, command_id: str, instances: Sequence[Instance], timeout: float,
                     poll_interval: float, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> list[Invocation]:
    """Poll every instance's invocation until all have finished; fail naming each instance that did not succeed.

    A command that outlives ``timeout`` is reported as such (with the instances
    still running it) instead of hanging the workflow until GitHub kills it.
    """
    deadline = clock() + timeout
    done: dict[str, Invocation] = {}
    pending = [i.id for i in instances]
    while pending:
        for instance_id in list(pending):
            inv = _invocation(ssm, command_id, instance_id)
            if inv is not None and inv.status not in RUNNING_STATES:
                done[instance_id] = inv
                pending.remove(instance_id)
                log.info("SSM command %s on %s: %s", command_id, instance_id, inv.status)
        if not pending:
            break
        if clock() >= deadline:
            raise DeployError(f"SSM command {command_id} still running after {timeout:g} s on "
                              f"{', '.join(pending)} (deploy.command_timeout)")
        sleep(poll_interval)
    failed = [inv for inv in done.values() if inv.status != "Success"]
    if failed:
        details = "; ".join(f"{inv.instance_id}: {inv.status}" + (f" ({_tail(inv.stderr)})" if inv.stderr.strip()
                                                                  else "") for inv in failed)
        raise DeployError(f"SSM command {command_id} failed on {len(failed)} of {len(done)} instance(s): {details}")
    return [done[i.id] for i in instances]


def _tail(text: str) -> str:
    text = " | ".join(line for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= OUTPUT_TAIL else "..." + text[-OUTPUT_TAIL:]


def last_command(ssm: Any, command_id: str) -> dict[str, Any] | None:
    """What SSM knows of one command (status, time, comment), or None when it has aged out."""
    try:
        commands = ssm.list_commands(CommandId=command_id).get("Commands", [])
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "InvalidCommandId":
            return None
        raise
    return commands[0] if commands else None
