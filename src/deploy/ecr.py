"""The ECR repository the workflows push the service image to.

Tags are immutable (a git SHA always names the same image, so a rollback really
returns to the bytes that ran before) and every push is scanned for known CVEs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from src.deploy.errors import MissingResource

log = logging.getLogger(__name__)

TAG_MUTABILITY = "IMMUTABLE"


@dataclass(frozen=True)
class Repository:
    name: str
    uri: str
    created: bool
    fixed: tuple[str, ...]  # settings that had drifted and were put back


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def describe_repository(ecr: Any, name: str) -> dict[str, Any] | None:
    """The repository's description, or None when it does not exist."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    except ClientError as exc:
        if _error_code(exc) == "RepositoryNotFoundException":
            return None
        raise


def ensure_repository(ecr: Any, name: str) -> Repository:
    """Create the repository, or bring an existing one back to scan-on-push and immutable tags.

    Idempotent, so the deploy workflow can call it on every run: a repository made
    by hand or by Terraform with other settings is corrected, not duplicated.
    """
    repo = describe_repository(ecr, name)
    if repo is None:
        repo = ecr.create_repository(
            repositoryName=name,
            imageTagMutability=TAG_MUTABILITY,
            imageScanningConfiguration={"scanOnPush": True},
        )["repository"]
        log.info("created ECR repository %s (scan on push, immutable tags)", repo["repositoryUri"])
        return Repository(name=name, uri=repo["repositoryUri"], created=True, fixed=())
    fixed = []
    if repo.get("imageTagMutability") != TAG_MUTABILITY:
        ecr.put_image_tag_mutability(repositoryName=name, imageTagMutability=TAG_MUTABILITY)
        fixed.append(f"imageTagMutability {repo.get('imageTagMutability')} -> {TAG_MUTABILITY}")
    if not repo.get("imageScanningConfiguration", {}).get("scanOnPush", False):
        ecr.put_image_scanning_configuration(repositoryName=name, imageScanningConfiguration={"scanOnPush": True})
        fixed.append("scanOnPush false -> true")
    for change in fixed:
        log.warning("ECR repository %s: %s", name, change)
    if not fixed:
        log.info("ECR repository %s exists with scan on push and immutable tags", repo["repositoryUri"])
    return Repository(name=name, uri=repo["repositoryUri"], created=False, fixed=tuple(fixed))


def require_image(ecr: Any, name: str, tag: str) -> str:
    """The repository URI, after checking that ``name:tag`` was pushed; fails before any instance is touched."""
    repo = describe_repository(ecr, name)
    if repo is None:
        raise MissingResource(f"ECR repository '{name}' does not exist in this region: "
                              "run `python -m src.deploy ensure-registry` and push the image first")
    try:
        ecr.describe_images(repositoryName=name, imageIds=[{"imageTag": tag}])
    except ClientError as exc:
        if _error_code(exc) == "ImageNotFoundException":
            raise MissingResource(f"image {repo['repositoryUri']}:{tag} is not in ECR: "
                                  "build and push it first") from None
        raise
    return repo["repositoryUri"]
