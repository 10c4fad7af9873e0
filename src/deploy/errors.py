"""Failures the deploy CLI reports as one line with a meaningful exit code, never a traceback."""

from __future__ import annotations

from src.common import PipelineError

# Exit codes: 1 = a release was attempted and failed (and was rolled back when possible);
# 2 = nothing was changed because something the release needs is missing or misconfigured.
EXIT_FAILED = 1
EXIT_MISSING = 2


class DeployError(PipelineError):
    """A deploy step failed; ``exit_code`` tells the workflow what kind of failure it was."""

    exit_code = EXIT_FAILED


class MissingResource(DeployError):
    """No instances, no repository, no image...: the release did not touch anything."""

    exit_code = EXIT_MISSING
