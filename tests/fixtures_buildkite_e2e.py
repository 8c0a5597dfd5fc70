"""Fixtures for running buildkite/pipeline.yml against the fake Buildkite, the session's Prefect server
and a real `prefect worker` subprocess. Load them with `pytest_plugins = ["tests.fixtures_buildkite_e2e"]`;
each test module gets its own fake, apply and worker (module scope), shared by its tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.buildkite_e2e_helpers import (
    AGENT_TOKEN,
    APPROVER,
    APPROVER_TOKEN,
    REPO,
    Worker,
    fake_steps,
    pipeline_steps,
)
from tests.fakes.buildkite_fixtures import ORG, PIPELINE, TOKEN
from tests.fakes.buildkite_server import FakeBuildkite
from tests.process_helpers import repo_checkout, wait_for


@pytest.fixture(scope="module")
def bk_fake() -> Iterator[FakeBuildkite]:
    """A fake Buildkite whose pipeline acme/trainkite has pipeline.yml's steps."""
    fake = FakeBuildkite().start()
    fake.add_token(TOKEN, user="trainkite-bot", teams=("ml-bot",))
    fake.add_token(APPROVER_TOKEN, user=APPROVER, teams=("ml-approvers",))
    fake.add_token(AGENT_TOKEN, user="buildkite-agent")
    fake.add_pipeline(ORG, PIPELINE, steps=fake_steps(pipeline_steps()))
    # Launch's idempotency key is the build's identity: on a Prefect server reused across sessions
    # (TRAINKITE_TEST_PREFECT_API_URL), build #1 would find last session's flow run. Buildkite's
    # numbers only grow, so start where no earlier session can have been.
    with fake._lock:
        fake._pipelines[(ORG, PIPELINE)]["next"] = time.time_ns() // 1_000_000
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def applied(prefect_api) -> dict[str, Any]:
    from deployments.apply import apply

    return apply()


@pytest.fixture(scope="module")
def e2e_home(tmp_path_factory) -> Iterator[Path]:
    """TRAINKITE_HOME shared by the worker's flow runs and the step subprocesses (deploy reads the store).

    A local deploy step leaves its server running in the background, as it does for a user: stopped here, so the
    next module's build can serve on the same port."""
    home = tmp_path_factory.mktemp("e2e-home")
    yield home
    subprocess.run(
        [sys.executable, "-m", "cli", "deployments", "stop"],
        env={**os.environ, "TRAINKITE_HOME": str(home)},
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def clean_checkout(tmp_path_factory) -> Path:
    """The agent's checkout: a clean clone of the commit the worker's code is (the repo may be mid-edit)."""
    return repo_checkout(tmp_path_factory.mktemp("checkout") / "repo")


@pytest.fixture(scope="module")
def process_worker(applied, bk_fake, e2e_home, tmp_path_factory) -> Iterator[Worker]:
    """`prefect worker start --pool trainkite-process`, polling every 2 s, with the bot's Buildkite
    token in its environment (the way a real worker host gets it: never through job variables); its
    runs look at their build every 2 s."""
    if not sys.platform.startswith("linux"):
        pytest.skip("finds flow-run processes through /proc")
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKITE")}
    env.update(
        {
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "BUILDKITE_API_URL": bk_fake.url,
            "BUILDKITE_API_TOKEN": TOKEN,
            "TRAINKITE_HOME": str(e2e_home),
            "TRAINKITE_BUILD_WATCH_SECONDS": "2",
        }
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                "trainkite-process",
                "--name",
                f"trainkite-test-{os.getpid()}",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    worker = Worker(proc, log)
    try:
        wait_for("the worker to start", lambda: proc.poll() is not None or "started!" in worker.tail(), 120)
        assert proc.poll() is None, worker.tail()
        yield worker
    finally:
        worker.stop()
