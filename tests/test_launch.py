"""`trainkite launch` refusals (no Prefect needed: they happen before anything starts) and its plain helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from buildkite import launch as ln
from buildkite.context import BuildContext
from tests.fakes.buildkite_fixtures import ORG, PIPELINE, TOKEN
from tests.process_helpers import git_checkout

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def checkout(tmp_path) -> Path:
    return git_checkout(tmp_path / "checkout", "tracked.txt", "v1\n")


def _launch(args: list[str], fake, number: int, checkout: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKITE")}
    env.update({"BUILDKITE": "true", "BUILDKITE_BUILD_NUMBER": str(number), "BUILDKITE_PIPELINE_SLUG": PIPELINE,
                "BUILDKITE_ORGANIZATION_SLUG": ORG, "BUILDKITE_BUILD_CHECKOUT_PATH": str(checkout),
                "BUILDKITE_API_URL": fake.url, "BUILDKITE_API_TOKEN": TOKEN,
                # Unreachable on purpose: a refusal must come before any Prefect call.
                "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    return subprocess.run([sys.executable, "-m", "trainkite", "launch", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


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
    env = {"TRAINKITE_PARAMS": str(REPO / "params" / "topic.toml"),
           "TRAINKITE_SET": "train.epochs=4\n\n# a comment\ntrain.seed=7\n"}
    params = ln.resolve_params(None, ["train.seed=8"], env)
    assert params.model.name == "topic"
    assert (params.train.epochs, params.train.seed) == (4, 8)


def test_run_identity_never_carries_secrets():
    env = {"BUILDKITE_BUILD_NUMBER": "42", "BUILDKITE_PIPELINE_SLUG": PIPELINE, "BUILDKITE_ORGANIZATION_SLUG": ORG,
           "BUILDKITE_COMMIT": "abc", "BUILDKITE_API_TOKEN": TOKEN, "BUILDKITE_AGENT_ACCESS_TOKEN": "agent-secret"}
    build = BuildContext.from_env(env)
    assert ln.idempotency_key(build) == "buildkite-acme-trainkite-42"
    job = ln.job_env(env, build.model_id)
    assert job == {"BUILDKITE_BUILD_NUMBER": "42", "BUILDKITE_PIPELINE_SLUG": PIPELINE,
                   "BUILDKITE_ORGANIZATION_SLUG": ORG, "BUILDKITE_COMMIT": "abc", "TRAINKITE_MODEL_ID": "trainkite-42"}
    assert TOKEN not in str(build.model_dump()) and "agent-secret" not in str(build.model_dump())
