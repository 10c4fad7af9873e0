"""A rolling release: the image tag onto one instance at a time, a smoke test each, rollback when one fails.

Per instance: out of the load balancer's target group (drained), the container
replaced by SSM Run Command and smoke-tested on the host itself (127.0.0.1, with
the smoke key from SSM: src/deploy/secrets.py), back in the group once its health
check (/ready) passes, then the smoke test from outside; only then the next
instance, so at most one is out of service at any moment (src/deploy/balancer.py;
without a balancer the hosts are still replaced one at a time). A failure stops the rollout and returns the instances
already changed, the failing one included, to the previous tag the same way.

The SSM parameter ``<prefix>/<env>/current-tag`` says which tag runs; it is read
before a release (that is the tag a rollback returns to) and written only once
every instance has switched. ``<prefix>/<env>/last-release`` keeps a JSON record of
the last attempt (tags, outcome, SSM command ids) for ``status``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import boto3
from botocore.exceptions import ClientError

from src.config import DeploySettings, env
from src.deploy import balancer, fleet, secrets
from src.deploy import ecr as ecr_ops
from src.deploy.errors import DeployError, MissingResource
from src.deploy.smoke import SmokeTestFailed, smoke_test

log = logging.getLogger(__name__)

CURRENT_TAG = "current-tag"
LAST_RELEASE = "last-release"


@dataclass(frozen=True)
class Aws:
    """The clients a release needs (boto3 picks AWS_ENDPOINT_URL up itself, so moto works unchanged)."""

    ec2: Any
    ecr: Any
    ssm: Any
    elb: Any = None


def connect(region: str) -> Aws:
    session = boto3.session.Session(region_name=region)
    return Aws(ec2=session.client("ec2"), ecr=session.client("ecr"), ssm=session.client("ssm"),
               elb=session.client("elbv2"))


@dataclass
class ReleaseOutcome:
    tag: str
    previous: str | None
    instances: list[str]
    commands: list[str] = field(default_factory=list)
    smoke_urls: list[str] = field(default_factory=list)
    outcome: str = "released"


def actor() -> str:
    """Who released: the GitHub actor in a workflow, else the OS user."""
    return os.environ.get("GITHUB_ACTOR") or os.environ.get("MLOPS_ACTOR") or getpass.getuser()


def read_parameter(ssm: Any, name: str) -> str | None:
    try:
        return ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
            return None
        raise


def write_parameter(ssm: Any, name: str, value: str, description: str) -> None:
    ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True, Description=description)


def current_tag(ssm: Any, cfg: DeploySettings) -> str | None:
    return read_parameter(ssm, cfg.parameter(CURRENT_TAG))


def last_release(ssm: Any, cfg: DeploySettings) -> dict[str, Any] | None:
    raw = read_parameter(ssm, cfg.parameter(LAST_RELEASE))
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _record(ssm: Any, cfg: DeploySettings, outcome: ReleaseOutcome, reason: str = "") -> None:
    record = {"tag": outcome.tag, "previous": outcome.previous, "outcome": outcome.outcome,
              "commands": outcome.commands, "instances": outcome.instances, "reason": reason[:1500],
              "at": datetime.now(UTC).isoformat(timespec="seconds"), "by": actor()}
    write_parameter(ssm, cfg.parameter(LAST_RELEASE), json.dumps(record), "last release attempt (src.deploy)")


def smoke_target(cfg: DeploySettings, instance: fleet.Instance) -> str:
    """The base URL that smoke-tests ``instance``: deploy.smoke_url (e.g. the load balancer), else its own IP."""
    if cfg.smoke_url:
        return cfg.smoke_url.rstrip("/")
    if not instance.address:
        raise MissingResource(f"instance {instance.id} has no IP address to smoke-test: give --smoke-url")
    return f"http://{instance.address}:{cfg.port}"


def switch(aws: Aws, cfg: DeploySettings, instance: fleet.Instance, repo_uri: str, tag: str, comment: str,
           sleep: Callable[[float], None], before_traffic: Callable[[], None] | None = None) -> str:
    """One instance onto ``tag``: out of the target group, the container replaced, ``before_traffic`` (the smoke
    test of the host itself), back in, healthy; the SSM command id. (A failure leaves it out of the group: the
    rollback puts it back.)"""
    group = cfg.target_group_arn
    if group:
        balancer.take_out(aws.elb, group, instance.id, cfg.drain_timeout, cfg.poll_interval, sleep)
    lines = fleet.release_script(f"{repo_uri}:{tag}", tag, cfg, cfg.region)
    command_id = fleet.send_script(aws.ssm, [instance], lines, comment, cfg.command_timeout)
    fleet.wait_for_command(aws.ssm, command_id, [instance], cfg.command_timeout, cfg.poll_interval, sleep=sleep)
    if before_traffic is not None:
        before_traffic()
    if group:
        balancer.put_back(aws.elb, group, instance.id, cfg.smoke_timeout, cfg.poll_interval, sleep)
    return command_id


def smoke(cfg: DeploySettings, url: str, sleep: Callable[[float], None]) -> None:
    smoke_test(url, cfg.smoke_timeout, cfg.http_timeout, cfg.smoke_applicant,
               poll_interval=min(cfg.poll_interval, 5.0), sleep=sleep, api_key=env.text(env.API_KEY))


def _roll_back(aws: Aws, cfg: DeploySettings, changed: Sequence[fleet.Instance], repo_uri: str,
               outcome: ReleaseOutcome, reason: str, sleep: Callable[[float], None]) -> NoReturn:
    """Return the instances already changed to the previous tag (the last one first), one at a time; record it
    and raise the release's failure."""
    previous = outcome.previous
    if previous is None or previous == outcome.tag:
        outcome.outcome = "failed"
        _record(aws.ssm, cfg, outcome, reason)
        raise DeployError(f"{reason}; no previous tag in {cfg.parameter(CURRENT_TAG)} to roll back to, "
                          f"so {', '.join(i.id for i in changed)} left on {outcome.tag}")
    log.warning("release of %s failed; rolling %s back to %s", outcome.tag, ", ".join(i.id for i in changed),
                previous)
    after = "passed"
    for instance in reversed(changed):
        try:
            outcome.commands.append(switch(aws, cfg, instance, repo_uri, previous,
                                           f"rollback {cfg.app} {cfg.env} to {previous}", sleep))
        except DeployError as exc:
            outcome.outcome = "rollback failed"
            _record(aws.ssm, cfg, outcome, f"{reason}; {exc}")
            raise DeployError(f"{reason}; ROLLBACK of {instance.id} to {previous} FAILED too: {exc}") from None
        try:  # (back in service either way: the previous tag is the best there is)
            smoke(cfg, smoke_target(cfg, instance), sleep)
        except SmokeTestFailed as exc:
            after = f"failed too: {exc}"
    outcome.outcome = "rolled back"
    _record(aws.ssm, cfg, outcome, reason)
    raise DeployError(f"release of {outcome.tag} failed and was rolled back to {previous} "
                      f"(smoke test after rollback {after}): {reason}")


def release(aws: Aws, cfg: DeploySettings, tag: str, sleep: Callable[[float], None] = time.sleep) -> ReleaseOutcome:
    """Deploy ``tag`` to every running instance of App=<app>, Env=<env>, one at a time; roll back if one fails.

    Everything that can be checked without touching an instance (instances exist,
    image exists, smoke-test addresses known, the target group knows every instance)
    is checked first, so a misconfigured release fails with exit 2 and changes nothing.
    """
    instances = fleet.require_instances(aws.ec2, cfg.app, cfg.env)
    repo_uri = ecr_ops.require_image(aws.ecr, cfg.repository, tag)
    outcome = ReleaseOutcome(tag=tag, previous=current_tag(aws.ssm, cfg), instances=[i.id for i in instances],
                             smoke_urls=sorted({smoke_target(cfg, i) for i in instances}))
    if cfg.target_group_arn:
        balancer.require_group(aws.elb, cfg.target_group_arn, outcome.instances)
        if not secrets.present(aws.ssm, cfg)[secrets.SMOKE_KEY]:  # no host may take traffic untested
            raise MissingResource(f"no {cfg.parameter(secrets.SMOKE_KEY)} in SSM: behind a load balancer each host "
                                  "smoke-tests its new container before it takes traffic again, with that key "
                                  "(API_KEY=<a score key> python -m src.deploy secrets push --smoke-key)")
    log.info("releasing %s:%s to %d instance(s) in %s, one at a time (running now: %s)", repo_uri, tag,
             len(instances), cfg.env, outcome.previous or "nothing recorded")
    changed: list[fleet.Instance] = []
    for instance in instances:
        changed.append(instance)  # from here on it may be half-switched: a rollback includes it
        url = smoke_target(cfg, instance)
        # The host smoke-tests its new container itself (the release script); from here, on the host's own
        # address it runs again before the host takes traffic, through the balancer (deploy.smoke_url) once
        # the host is back behind it and healthy.
        direct = not cfg.smoke_url
        try:
            outcome.commands.append(switch(aws, cfg, instance, repo_uri, tag, f"release {cfg.app} {cfg.env} {tag}",
                                           sleep, (lambda u=url: smoke(cfg, u, sleep)) if direct else None))
            if not direct:
                smoke(cfg, url, sleep)
        except DeployError as exc:  # (a failed smoke test is one too)
            _roll_back(aws, cfg, changed, repo_uri, outcome, f"{instance.id}: {exc}", sleep)
        log.info("%s now runs %s (%d of %d)", instance.id, tag, len(changed), len(instances))
    write_parameter(aws.ssm, cfg.parameter(CURRENT_TAG), tag, f"image tag running in {cfg.env}")
    _record(aws.ssm, cfg, outcome)
    log.info("released %s to %s; smoke test passed on %s", tag, ", ".join(outcome.instances),
             ", ".join(outcome.smoke_urls))
    return outcome


@dataclass(frozen=True)
class Status:
    env: str
    region: str
    current_tag: str | None
    last_release: dict[str, Any] | None
    last_command: dict[str, Any] | None
    instances: list[fleet.Instance]


def status(aws: Aws, cfg: DeploySettings) -> Status:
    """What runs where: the recorded tag, the last release attempt and its SSM command, every tagged instance."""
    last = last_release(aws.ssm, cfg)
    command = None
    if last and last.get("commands"):
        command = fleet.last_command(aws.ssm, last["commands"][-1])
    return Status(env=cfg.env, region=cfg.region, current_tag=current_tag(aws.ssm, cfg), last_release=last,
                  last_command=command, instances=fleet.find_instances(aws.ec2, cfg.app, cfg.env, states=None))
