"""The release-build logic (no Prefect server): which step failed, when to release, and that the flow's
own hook and the release-build flow send identical values, so whichever comes second is a no-op."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from flows.hooks import release_build_on_failure
from tasks import release as rl
from tests.fakes.buildkite_fixtures import ORG, PIPELINE


def _task(name: str, state: str, start: str, end: str | None = None) -> dict:
    return {"name": name, "state": {"type": state, "name": state.title()}, "start_time": start, "end_time": end}


def test_failed_step_is_the_last_failed_task():
    runs = [
        _task("fetch_data-a1b", "COMPLETED", "t1", "t2"),
        _task("train-c3d", "FAILED", "t2", "t3"),
        _task("publish-e5f", "FAILED", "t4", "t5"),
    ]
    assert rl.failed_step(runs) == "publish"


def test_failed_step_of_a_killed_process_is_the_task_left_running():
    runs = [_task("fetch_data-a1b", "COMPLETED", "t1", "t2"), _task("train-c3d", "RUNNING", "t3")]
    assert rl.failed_step(runs) == "train (was Running)"
    assert rl.failed_step([]) is None


def test_parse_flow_run_id_accepts_event_resource_ids():
    run_id = str(uuid.uuid4())
    assert rl.parse_flow_run_id(f"prefect.flow-run.{run_id}") == run_id == rl.parse_flow_run_id(f" {run_id} ")


def _flow_run(build: dict | None, state_type: str = "CRASHED", message: str = "Process exited with status code: -9."):
    return {
        "id": str(uuid.uuid4()),
        "name": "brave-otter",
        "parameters": {"build": build, "model_id": None},
        "state": {"type": state_type, "name": state_type.title(), "message": message},
    }


def test_nothing_to_release_without_a_build_or_a_failure():
    assert rl.release(rl.summarize(_flow_run(None), [])) == "skipped: no build"
    build = {"number": 1, "pipeline": PIPELINE, "organization": ORG}
    assert rl.release(rl.summarize(_flow_run(build, "RUNNING", ""), [])) == "skipped: run is RUNNING"


def test_hook_and_release_flow_release_once_with_identical_values(fake_buildkite, buildkite_env):
    from prefect.states import Crashed

    number = fake_buildkite.create_build(ORG, PIPELINE)
    build = {"number": number, "pipeline": PIPELINE, "organization": ORG}
    flow_run = _flow_run(build)
    run = rl.summarize(flow_run, [_task("train-c3d", "RUNNING", "t3")])

    # The process worker runs the flow's on_crashed hook first ...
    state = Crashed(message=flow_run["state"]["message"])
    hook_run = SimpleNamespace(id=flow_run["id"], name=flow_run["name"], parameters=flow_run["parameters"])
    release_build_on_failure(None, hook_run, state)
    meta = fake_buildkite.build(ORG, PIPELINE, number)["meta_data"]
    assert meta["training-status"] == "failed" and meta["model-id"] == f"{PIPELINE}-{number}"
    assert meta["metrics"] == "training failed: CRASHED: Process exited with status code: -9."

    # ... then the automation's release-build run: same values, so the unblock is a no-op, and its
    # annotation adds the step that died.
    assert rl.release(run) == "released"
    assert rl.release(run) == "released"
    assert len(fake_buildkite.requests_to("PUT", r"/unblock$")) == 1
    assert fake_buildkite.build(ORG, PIPELINE, number)["meta_data"] == meta
    note = {a["context"]: a for a in fake_buildkite.annotations(ORG, PIPELINE, number)}["trainkite-training"]
    assert note["style"] == "error" and "`train (was Running)`" in note["body"] and flow_run["id"] in note["body"]


def test_a_second_failure_worded_differently_finds_the_build_released(fake_buildkite, buildkite_env):
    """Two runs report one build's failure (a Batch job's own run, then its train-batch run that gave up on it):
    the second finds the step released as failed and stops there instead of failing on the other wording."""
    number = fake_buildkite.create_build(ORG, PIPELINE)
    build = {"number": number, "pipeline": PIPELINE, "organization": ORG}
    inner = rl.summarize(_flow_run(build, "CRASHED", "Execution was aborted by a termination signal."), [])
    outer = rl.summarize(_flow_run(build, "FAILED", "AWS Batch job j-1 still RUNNING after 21600s"), [])
    assert rl.release(inner) == "released"
    assert rl.release(outer) == "already released"
    meta = fake_buildkite.build(ORG, PIPELINE, number)["meta_data"]
    assert meta["metrics"] == "training failed: CRASHED: Execution was aborted by a termination signal."


def test_a_success_after_a_failure_release_is_still_refused(fake_buildkite, buildkite_env):
    """The build moved on as failed: a model published later must not pass for the build's (start a new build)."""
    from buildkite.client import BuildkiteError
    from tasks import notify

    number = fake_buildkite.create_build(ORG, PIPELINE)
    build = {"number": number, "pipeline": PIPELINE, "organization": ORG}
    assert rl.release(rl.summarize(_flow_run(build), [])) == "released"
    ctx = rl.summarize(_flow_run(build), []).build
    fields = notify.success_fields(
        model_id=ctx.model_id, artifact_uri="/m", wandb_run_id=None, docker_image=None, metrics_line="test_accuracy=0.9"
    )
    with pytest.raises(BuildkiteError, match="already unblocked with different values"):
        notify.notify_success(ctx, fields, "### m")
