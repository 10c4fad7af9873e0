"""A release: the image tag onto every instance, a smoke test, and automatic rollback when it fails.

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
from src.deploy import ecr as ecr_ops
from src.deploy import fleet
from src.deploy.errors import DeployError, MissingResource
from src.deploy.smoke import SmokeTestFailed, smoke_test

log = logging.getLogger(__name__)

CURRENT_TAG = "current-tag"
LAST_RELEASE = "last-release"


@dataclass(frozen=True)
class Aws:
    """The three clients a release needs (boto3 picks AWS_ENDPOINT_URL up itself, so moto works unchanged)."""

    ec2: Any
    ecr: Any
    ssm: Any


def connect(region: str) -> Aws:
    session = boto3.session.Session(region_name=region)
    return Aws(ec2=session.client("ec2"), ecr=session.client("ecr"), ssm=session.client("ssm"))


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


def smoke_targets(cfg: DeploySettings, instances: Sequence[fleet.Instance]) -> list[str]:
    """Base URLs to smoke-test: deploy.smoke_url (e.g. a load balancer), else every instance on deploy.port."""
    if cfg.smoke_url:
        return [cfg.smoke_url.rstrip("/")]
    missing = [i.id for i in instances if not i.address]
    if missing:
        raise MissingResource(f"instance(s) {', '.join(missing)} have no IP address to smoke-test: "
                              "give --smoke-url")
    return [f"http://{i.address}:{cfg.port}" for i in instances]


def switch(aws: Aws, cfg: DeploySettings, instances: Sequence[fleet.Instance], repo_uri: str, tag: str,
           comment: str, sleep: Callable[[float], None]) -> str:
    """Run the pull-and-restart script for ``tag`` on every instance and wait for all of them."""
    lines = fleet.release_script(f"{repo_uri}:{tag}", tag, cfg, cfg.region)
    command_id = fleet.send_script(aws.ssm, instances, lines, comment, cfg.command_timeout)
    fleet.wait_for_command(aws.ssm, command_id, instances, cfg.command_timeout, cfg.poll_interval, sleep=sleep)
    return command_id


def _smoke_all(cfg: DeploySettings, urls: Sequence[str], sleep: Callable[[float], None]) -> None:
    for url in urls:
        smoke_test(url, cfg.smoke_timeout, cfg.http_timeout, cfg.smoke_applicant,
                   poll_interval=min(cfg.poll_interval, 5.0), sleep=sleep, api_key=env.text(env.API_KEY))


def _roll_back(aws: Aws, cfg: DeploySettings, instances: Sequence[fleet.Instance], repo_uri: str,
               outcome: ReleaseOutcome, reason: str, sleep: Callable[[float], None]) -> NoReturn:
    """Return every instance to the previous tag, record it, and raise the release's failure."""
    previous = outcome.previous
    if previous is None or previous == outcome.tag:
        outcome.outcome = "failed"
        _record(aws.ssm, cfg, outcome, reason)
        raise DeployError(f"{reason}; no previous tag in {cfg.parameter(CURRENT_TAG)} to roll back to, "
                          f"so the instances are left on {outcome.tag}")
    log.warning("release of %s failed; rolling back to %s", outcome.tag, previous)
    try:
        outcome.commands.append(switch(aws, cfg, instances, repo_uri, previous,
                                       f"rollback {cfg.app} {cfg.env} to {previous}", sleep))
    except DeployError as exc:
        outcome.outcome = "rollback failed"
        _record(aws.ssm, cfg, outcome, f"{reason}; {exc}")
        raise DeployError(f"{reason}; ROLLBACK to {previous} FAILED too: {exc}") from None
    write_parameter(aws.ssm, cfg.parameter(CURRENT_TAG), previous, f"image tag running in {cfg.env}")
    try:
        _smoke_all(cfg, outcome.smoke_urls, sleep)
        after = "passed"
    except SmokeTestFailed as exc:
        after = f"failed too: {exc}"
    outcome.outcome = "rolled back"
    _record(aws.ssm, cfg, outcome, reason)
    raise DeployError(f"release of {outcome.tag} failed and was rolled back to {previous} "
                      f"(smoke test after rollback {after}): {reason}")


def release(aws: Aws, cfg: DeploySettings, tag: str, sleep: Callable[[float], None] = time.sleep) -> ReleaseOutcome:
    """Deploy ``tag`` to every running instance of App=<app>, Env=<env>; roll back if it does not serve.

    Everything that can be checked without touching an instance (instances exist,
    image exists, smoke-test addresses known) is checked first, so a misconfigured
    release fails with exit 2 and changes nothing.
    """
    instances = fleet.require_instances(aws.ec2, cfg.app, cfg.env)
    repo_uri = ecr_ops.require_image(aws.ecr, cfg.repository, tag)
    outcome = ReleaseOutcome(tag=tag, previous=current_tag(aws.ssm, cfg), instances=[i.id for i in instances],
                             smoke_urls=smoke_targets(cfg, instances))
    log.info("releasing %s:%s to %d instance(s) in %s (running now: %s)", repo_uri, tag, len(instances), cfg.env,
             outcome.previous or "nothing recorded")
    try:
        outcome.commands.append(switch(aws, cfg, instances, repo_uri, tag, f"release {cfg.app} {cfg.env} {tag}",
                                       sleep))
    except DeployError as exc:  # some instances may have switched already: bring them all back
        _roll_back(aws, cfg, instances, repo_uri, outcome, str(exc), sleep)
    write_parameter(aws.ssm, cfg.parameter(CURRENT_TAG), tag, f"image tag running in {cfg.env}")
    try:
        _smoke_all(cfg, outcome.smoke_urls, sleep)
    except SmokeTestFailed as exc:
        _roll_back(aws, cfg, instances, repo_uri, outcome, str(exc), sleep)
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
