"""The service image end to end: the repo's Dockerfile, unchanged, built, run, pushed, pulled and run again.

No Docker daemon here: ../shared/tools/container-sandbox.sh builds with buildah and runs
with podman (it apt-installs them, and builds the local python:3.11-slim stand-in with
`base`). The model is baked in from a real `mlflow server` on 127.0.0.1 holding the
trained project's exported champion (proxied artifacts, like a team registry), through
the Dockerfile's build args. Then, against the running container:

* with no credentials it refuses to start (it listens on 0.0.0.0); with a credentials
  file mounted, the API needs the key (401 without) and the form a signed-in user;
* /ready says the baked model (/app/model, the registered name and version) is served;
* POST /api/v1/predict and the web form (CSRF token from the page) both score a row,
  with exactly the probability and decision the model gives in process;
* the image goes to a registry on 127.0.0.1, is deleted locally, pulled back, run
  again on another port (open on purpose: AUTH_ALLOW_OPEN=true), and scores the same.

Skips only when the sandbox's tools cannot be installed (the message says so).

The story itself is tests/integration/container.py: the session starts it in the background at its first
integration test and runs this test last (it waits for the story; an assertion failing in it fails here).
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from tests.integration import container

pytestmark = [pytest.mark.container, pytest.mark.integration]


@pytest.mark.story(start=container.start, minutes=8)
def test_image_builds_runs_ships_through_a_registry_and_runs_again(story: Future[None]) -> None:
    story.result()
