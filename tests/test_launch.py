"""`trainkite launch` refusals (no Prefect needed: they happen before anything starts) and its plain helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli import launch as ln
from buildkite.context import BuildContext
from tests.fakes.buildkite_fixtures import ORG, PIPELINE, TOKEN
from tests.process_helpers import git_checkout

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def checkout(tmp_path) -> Path:
    return git_checkout(tmp_path / "checkout", "tracked.txt", "v1\n")


def _launch(args: list[str], fake, number: int, checkout: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKITE")}
    env.update(
        {
            "BUILDKITE": "true",
            "BUILDKITE_BUILD_NUMBER": str(number),
            "BUILDKITE_PIPELINE_SLUG": PIPELINE,
            "BUILDKITE_ORGANIZATION_SLUG": ORG,
            "BUILDKITE_BUILD_CHECKOUT_PATH": str(checkout),
            "BUILDKITE_API_URL": fake.url,
            "BUILDKITE_API_TOKEN": TOKEN,
            # Unreachable on purpose: a refusal must come before any Prefect call.
            "PREFECT_API_URL": "http://127.0.0.1:9/api",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "cli", "launch", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_bad_params_fail_the_step_with_exit_2_before_anything_starts(fake_buildkite, checkout):
    number = fake_buildkite.create_build(ORG, PIPELINE)
    out = _launch(["--set", "train.epochs=0"], fake_buildkite, number, checkout)
    assert out.returncode == 2, out.stderr
    assert "train.epochs" in out.stderr
    assert fake_buildkite.requests == []


def test_a_dirty_checkout_is_refused_with_exit_2(fake_buildkite, checkout):
    (checkout / "tracked.txt").write_text("changed by an earlier step\n")
    (checkout / "untracked.txt").write_text("ignored\n")
    number = fake_buildkite.create_build(ORG, PIPELINE)
    out = _launch([], fake_buildkite, number, checkout)
    assert out.returncode == 2, out.stderr
    assert "uncommitted changes" in out.stderr and "tracked.txt" in out.stderr
    assert fake_buildkite.requests == []


def test_untracked_files_do_not_make_a_checkout_dirty(checkout):
    (checkout / "build-output.log").write_text("x\n")
    assert ln.dirty_files(checkout) == []
    ln.require_clean_tree(checkout)


def test_params_come_from_the_file_then_trainkite_set_then_flags():
    env = {
        "TRAINKITE_PARAMS": str(REPO / "params" / "topic.toml"),
        "TRAINKITE_SET": "train.epochs=4\n\n# a comment\ntrain.seed=7\n",
    }
    params = ln.resolve_params(None, ["train.seed=8"], env)
    assert params.model.name == "topic"
    assert (params.train.epochs, params.train.seed) == (4, 8)


def test_run_identity_never_carries_secrets():
    env = {
        "BUILDKITE_BUILD_NUMBER": "42",
        "BUILDKITE_PIPELINE_SLUG": PIPELINE,
        "BUILDKITE_ORGANIZATION_SLUG": ORG,
        "BUILDKITE_COMMIT": "abc",
        "BUILDKITE_API_TOKEN": TOKEN,
        "BUILDKITE_AGENT_ACCESS_TOKEN": "agent-secret",
    }
    build = BuildContext.from_env(env)
    assert ln.idempotency_key(build) == "buildkite-acme-trainkite-42"
    job = ln.job_env(env, build.model_id)
    assert job == {
        "BUILDKITE_BUILD_NUMBER": "42",
        "BUILDKITE_PIPELINE_SLUG": PIPELINE,
        "BUILDKITE_ORGANIZATION_SLUG": ORG,
        "BUILDKITE_COMMIT": "abc",
        "TRAINKITE_MODEL_ID": "trainkite-42",
    }
    assert TOKEN not in str(build.model_dump()) and "agent-secret" not in str(build.model_dump())


def test_launch_runs_the_builds_image_and_resolved_commit(prefect_api, fake_buildkite, checkout, monkeypatch):
    """Inside a build: BUILDKITE_COMMIT=HEAD becomes the checkout's SHA, and TRAINKITE_TRAIN_IMAGE the run's image
    job variable (read back from the Prefect server). The run goes to the ECS pool, which nothing polls here."""
    from prefect import get_client

    from deployments.apply import apply
    from deployments.specs import TRAIN_GPU_DEPLOYMENT

    apply()
    # Build numbers only grow; start past any earlier session's on a reused server (its idempotency keys).
    with fake_buildkite._lock:
        fake_buildkite._pipelines[(ORG, PIPELINE)]["next"] = time.time_ns() // 1_000_000
    number = fake_buildkite.create_build(ORG, PIPELINE)
    env = {
        "BUILDKITE_BUILD_NUMBER": str(number),
        "BUILDKITE_PIPELINE_SLUG": PIPELINE,
        "BUILDKITE_ORGANIZATION_SLUG": ORG,
        "BUILDKITE_COMMIT": "HEAD",
        "BUILDKITE_BUILD_CHECKOUT_PATH": str(checkout),
        "PREFECT_API_URL": prefect_api,
        "TRAINKITE_TRAIN_IMAGE": "123.dkr.ecr.us-east-1.amazonaws.com/train:abc",
    }
    monkeypatch.setenv("BUILDKITE_API_URL", fake_buildkite.url)
    monkeypatch.setenv("BUILDKITE_API_TOKEN", TOKEN)
    out = ln.launch_from_env(None, ["train.epochs=1"], TRAIN_GPU_DEPLOYMENT, env)
    head = ln.checkout_commit(checkout)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(out["flow_run_id"])
        client.delete_flow_run(run.id)  # never started; gone before any automation looks at it
    assert head and run.parameters["build"]["commit"] == head == run.job_variables["env"]["BUILDKITE_COMMIT"]
    assert run.job_variables["image"] == env["TRAINKITE_TRAIN_IMAGE"]


def test_a_batch_launch_passes_the_builds_image_to_the_flow(prefect_api, fake_buildkite, checkout, monkeypatch):
    """A Batch job cannot override its definition's image, so for train-batch the image is a flow parameter (the flow
    registers a definition with it); it is not a job variable of the CPU process that only waits."""
    from prefect import get_client

    from deployments.apply import apply
    from deployments.specs import BATCH_DEPLOYMENT

    apply()
    with fake_buildkite._lock:
        fake_buildkite._pipelines[(ORG, PIPELINE)]["next"] = time.time_ns() // 1_000_000
    number = fake_buildkite.create_build(ORG, PIPELINE)
    image = "123.dkr.ecr.us-east-1.amazonaws.com/train:def"
    env = {
        "BUILDKITE_BUILD_NUMBER": str(number),
        "BUILDKITE_PIPELINE_SLUG": PIPELINE,
        "BUILDKITE_ORGANIZATION_SLUG": ORG,
        "BUILDKITE_COMMIT": "HEAD",
        "BUILDKITE_BUILD_CHECKOUT_PATH": str(checkout),
        "PREFECT_API_URL": prefect_api,
        "TRAINKITE_TRAIN_IMAGE": image,
    }
    monkeypatch.setenv("BUILDKITE_API_URL", fake_buildkite.url)
    monkeypatch.setenv("BUILDKITE_API_TOKEN", TOKEN)
    out = ln.launch_from_env(None, ["train.epochs=1"], BATCH_DEPLOYMENT, env)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(out["flow_run_id"])
        client.delete_flow_run(run.id)
    assert run.parameters["image"] == image
    assert "image" not in run.job_variables
