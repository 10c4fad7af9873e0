"""The load balancer's target group during a rolling release: take one host out, put it back.

A host leaves the target group before its container is replaced (the balancer stops
sending it new requests and lets those in flight finish: the group's deregistration
delay) and rejoins once the new container answers; the next host waits until the
group reports this one healthy again (its health check is GET /ready). So at most
one host is out of service at any moment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from src.deploy.errors import DeployError, MissingResource

log = logging.getLogger(__name__)

GONE = ("unused",)  # deregistered and drained (a target still draining reads "draining")


def require_group(elb: Any, group: str, instance_ids: list[str]) -> None:
    """Before anything changes: the group exists and holds every instance the release will touch."""
    try:
        health = elb.describe_target_health(TargetGroupArn=group)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("TargetGroupNotFound", "ValidationError"):
            raise MissingResource(f"no target group {group} (deploy.target_group_arn, --target-group-arn)") from None
        raise
    registered = {d["Target"]["Id"] for d in health.get("TargetHealthDescriptions", [])}
    missing = [i for i in instance_ids if i not in registered]
    if missing:
        raise MissingResource(f"instance(s) {', '.join(missing)} are not in target group {group}: register them "
                              "(infra/terraform does) before releasing through the load balancer")


def state(elb: Any, group: str, instance_id: str) -> str:
    health = elb.describe_target_health(TargetGroupArn=group, Targets=[{"Id": instance_id}])
    descriptions = health.get("TargetHealthDescriptions") or [{}]
    return descriptions[0].get("TargetHealth", {}).get("State", "unused")


def _wait(elb: Any, group: str, instance_id: str, wanted: tuple[str, ...], timeout: float, poll: float,
          what: str, sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
    deadline = clock() + timeout
    seen = state(elb, group, instance_id)
    while seen not in wanted:
        if clock() >= deadline:
            raise DeployError(f"{instance_id} still '{seen}' in target group {group} after {timeout:g} s "
                              f"(waiting to be {what})")
        sleep(poll)
        seen = state(elb, group, instance_id)


def take_out(elb: Any, group: str, instance_id: str, timeout: float, poll: float,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Deregister the host and wait until it has drained (no request of the balancer's left on it)."""
    if state(elb, group, instance_id) not in GONE:  # (a rollback may find it out already)
        elb.deregister_targets(TargetGroupArn=group, Targets=[{"Id": instance_id}])
    log.info("%s: deregistered from the target group; draining", instance_id)
    _wait(elb, group, instance_id, GONE, timeout, poll, "drained", sleep, clock)
    log.info("%s: out of service", instance_id)


def put_back(elb: Any, group: str, instance_id: str, timeout: float, poll: float,
             sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Register the host again and wait until the balancer's health check passes."""
    elb.register_targets(TargetGroupArn=group, Targets=[{"Id": instance_id}])
    log.info("%s: registered again; waiting for the health check", instance_id)
    _wait(elb, group, instance_id, ("healthy",), timeout, poll, "healthy", sleep, clock)
    log.info("%s: back in service", instance_id)
