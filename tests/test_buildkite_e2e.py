"""buildkite/pipeline.yml end to end: its command steps run here in order against the fake Buildkite,
the session's Prefect server (deployments applied) and a real process worker.

Covers the happy path (launch -> train -> unblock -> review -> approve -> deploy), launch retries
(same flow run), a flow that raises, and a flow-run process killed with SIGKILL mid-training.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.buildkite_e2e_helpers import SMALL, PipelineRun, read_flow_run, release_runs_for
from tests.fakes.buildkite_fixtures import ORG, PIPELINE, TOKEN
from tests.process_helpers import git_checkout, repo_head, wait_for

pytest_plugins = ["tests.fixtures_buildkite_e2e"]

FIELDS = {"model-id", "model-data-path", "wandb-run-id", "model-env", "docker-image", "metrics", "training-status"}
# A bare worker poll (2 s) + process start + training of 3 epochs, on a busy 2-core box.
TRAINING_TIMEOUT = 150
# Trains until stopped.
SLOW = [
    "train.epochs=1000",
    "train.patience=0",
    "preprocess.buckets=4096",
    "model.embedding_dim=16",
    'tracking.backend="none"',
]


@pytest.fixture
def new_run(bk_fake, process_worker, e2e_home, clean_checkout):
    def make(overrides: list[str]) -> PipelineRun:
        number = bk_fake.create_build(ORG, PIPELINE)
        return PipelineRun(bk_fake, number, e2e_home, clean_checkout, {"TRAINKITE_SET": "\n".join(overrides)})

    return make


def _launch(run: PipelineRun) -> str:
    result = run.run_step("launch_training")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.last_line


def _deploy_command_exists() -> bool:
    from cli.main import app

    return any(c.name == "deploy" for c in app.registered_commands)


def _error_annotations(run: PipelineRun) -> list[str]:
    """Every error annotation body posted to the build (the hook's and release-build's; last one wins)."""
    posts = run.fake.requests_to("POST", rf"/builds/{run.number}/annotations$")
    return [r["body"]["body"] for r in posts if r["body"].get("style") == "error"]


def _no_token_in(*values) -> None:
    for value in values:
        assert TOKEN not in json.dumps(value, default=str)


def test_pipeline_trains_reviews_and_deploys(new_run, process_worker):
    run = new_run(SMALL)
    flow_run_id = _launch(run)

    # A retried launch step (agent lost, manual retry) must not start a second training.
    assert _launch(run) == flow_run_id

    try:
        meta = run.wait_unblocked("training_finished", TRAINING_TIMEOUT)
    except AssertionError:
        raise AssertionError(process_worker.tail()) from None
    assert set(meta) >= FIELDS
    assert meta["model-id"] == f"trainkite-{run.number}"
    assert meta["training-status"] == "passed"
    assert os.path.isdir(meta["model-data-path"]) and meta["model-data-path"].endswith(meta["model-id"])
    assert "evaluation_accuracy=" in meta["metrics"] and meta["wandb-run-id"] == "none"
    assert json.loads(meta["model-env"])["TRAINKITE_MODEL_ID"] == meta["model-id"]

    # The flow unblocks in its notify task; its last task (Prefect artifacts) runs after that.
    flow_run = wait_for("the flow run to finish", lambda: (r := read_flow_run(flow_run_id)).state.is_final() and r, 60)
    assert flow_run.state.is_completed()
    assert "buildkite" in flow_run.tags
    assert flow_run.idempotency_key == f"buildkite-{ORG}-{PIPELINE}-{run.number}"
    assert flow_run.parameters["model_id"] == meta["model-id"]
    assert flow_run.parameters["build"]["number"] == run.number
    env = flow_run.job_variables["env"]
    assert env["BUILDKITE_BUILD_NUMBER"] == str(run.number) and env["TRAINKITE_MODEL_ID"] == meta["model-id"]
    assert not any("TOKEN" in k for k in env)
    # The build said BUILDKITE_COMMIT=HEAD; launch resolved it from the agent's checkout, and the worker's code
    # is that commit, so the run trained.
    assert flow_run.parameters["build"]["commit"] == env["BUILDKITE_COMMIT"] == repo_head()

    notes = run.annotations()
    assert flow_run_id in notes["trainkite-launch"]["body"] and "/runs/flow-run/" in notes["trainkite-launch"]["body"]
    assert notes["trainkite-training"]["style"] == "success"

    review = run.run_step("review")
    assert review.returncode == 0, review.stderr
    note = run.annotations()["trainkite-review"]
    assert note["style"] == "success"
    assert "| evaluation_accuracy |" in note["body"] and meta["model-data-path"] in note["body"]
    assert "tracking was off" in note["body"]

    _no_token_in(
        flow_run.parameters,
        flow_run.job_variables,
        run.build["meta_data"],
        [a["body"] for a in run.annotations().values()],
    )

    run.approve("deploy")
    if not _deploy_command_exists():
        pytest.skip("`trainkite deploy` does not exist yet: the deploy step was not run")
    deploy = run.run_step("deploy_model", timeout=240)
    assert deploy.returncode == 0, deploy.stderr[-3000:]


def test_a_failing_flow_releases_the_build_and_review_fails(new_run, process_worker):
    run = new_run([*SMALL, 'data.query="SELECT text, sentiment AS label FROM comments WHERE 1=0"'])
    flow_run_id = _launch(run)

    meta = run.wait_unblocked("training_finished", TRAINING_TIMEOUT)
    assert meta["training-status"] == "failed"
    assert meta["model-id"] == f"trainkite-{run.number}"
    assert meta["metrics"].startswith("training failed: FAILED:") and "no rows" in meta["metrics"]
    assert read_flow_run(flow_run_id).state.is_failed()

    # The in-process hook released it first; the automation's release-build run must then find the
    # step already unblocked with identical values and still succeed.
    release = wait_for(
        "the release-build run to finish", lambda: [r for r in release_runs_for(flow_run_id) if r.state.is_final()], 90
    )
    assert release[0].state.is_completed(), (release[0].state, process_worker.tail())
    note = run.annotations()["trainkite-training"]
    assert note["style"] == "error" and flow_run_id in note["body"]
    assert "`fetch_data`" in " ".join(_error_annotations(run)), "release-build names the failed step"

    review = run.run_step("review")
    assert review.returncode != 0
    assert "did not pass" in review.stderr
    assert run.annotations()["trainkite-review"]["style"] == "error"


def _training_process(flow_run_id: str, worker) -> int | None:
    """The flow run's process once its train task is running."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # A task run can be read between its creation and its first state (state None).
    running = any(t.name.startswith("train-") and t.state is not None and t.state.is_running() for t in tasks)
    return running and worker.flow_run_process(flow_run_id)


def test_a_killed_flow_process_releases_the_build_within_a_minute(new_run, process_worker, record_property):
    run = new_run(SLOW)
    flow_run_id = _launch(run)
    pid = wait_for("the train task to run", lambda: _training_process(flow_run_id, process_worker), TRAINING_TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    meta = run.wait_unblocked("training_finished", 60)
    released_after = time.monotonic() - killed
    assert meta["training-status"] == "failed"
    assert meta["metrics"].startswith("training failed: CRASHED:")
    assert run.annotations()["trainkite-training"]["style"] == "error"
    assert read_flow_run(flow_run_id).state.is_crashed()

    # The server-side path on its own: the automation's release-build run, which does not need
    # anything from the dead process.
    release = wait_for(
        "the release-build run to finish", lambda: [r for r in release_runs_for(flow_run_id) if r.state.is_final()], 60
    )
    automation_after = time.monotonic() - killed
    assert release[0].state.is_completed(), (release[0].state, process_worker.tail())
    assert flow_run_id in run.annotations()["trainkite-training"]["body"]
    assert "`train (was Running)`" in " ".join(_error_annotations(run)), "release-build names the killed step"
    record_property("kill_to_released_s", round(released_after, 1))
    record_property("kill_to_release_flow_done_s", round(automation_after, 1))
    print(
        f"\nSIGKILL -> training_finished released: {released_after:.1f}s; "
        f"-> release-build run finished: {automation_after:.1f}s"
    )
    assert automation_after < 60

    review = run.run_step("review")
    assert review.returncode != 0


def test_a_build_canceled_in_buildkite_cancels_its_training_run(new_run, process_worker, record_property):
    """Someone presses Cancel on the build mid-training. Nothing in Buildkite tells the run; the run's build
    watch (every 2 s here, TRAINKITE_BUILD_WATCH_SECONDS) sees it, the run is cancelled through Prefect and its
    worker stops the process: no model is published, and neither the hook nor release-build fails on the
    canceled build."""
    import requests

    run = new_run(SLOW)
    flow_run_id = _launch(run)
    pid = wait_for("the train task to run", lambda: _training_process(flow_run_id, process_worker), TRAINING_TIMEOUT)
    resp = requests.put(
        f"{run.fake.url}/organizations/{ORG}/pipelines/{PIPELINE}/builds/{run.number}/cancel",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    canceled = time.monotonic()

    flow_run = wait_for("the run to be cancelled", lambda: (r := read_flow_run(flow_run_id)).state.is_final() and r, 90)
    stopped_after = time.monotonic() - canceled
    assert flow_run.state.is_cancelled(), (flow_run.state, process_worker.tail())
    wait_for("the flow-run process to exit", lambda: not _alive(pid), 30)
    history = _state_messages(flow_run_id)
    assert f"Buildkite build #{run.number} was canceled" in " ".join(history), history
    assert not list(run.home.rglob(f"trainkite-{run.number}/manifest.json")), "no model was published"

    release = wait_for(
        "the release-build run to finish", lambda: [r for r in release_runs_for(flow_run_id) if r.state.is_final()], 60
    )
    assert release[0].state.is_completed(), (release[0].state, process_worker.tail())
    unblocks = run.fake.requests_to("PUT", rf"/builds/{run.number}/jobs/[^/]+/unblock$")
    assert all(r["status"] == 422 for r in unblocks), unblocks  # a canceled build cannot be unblocked
    record_property("build_cancel_to_run_cancelled_s", round(stopped_after, 1))
    print(f"\nbuild canceled -> flow run Cancelled: {stopped_after:.1f}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _state_messages(flow_run_id: str) -> list[str]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return [f"{s.type.value}: {s.message}" for s in client.read_flow_run_states(flow_run_id)]


def test_a_run_cancelled_before_it_starts_releases_the_build(new_run, process_worker):
    """Cancelled from the Prefect UI while still scheduled: no flow process ever ran, so only the
    automation can tell the build."""
    from datetime import UTC, datetime, timedelta

    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled

    from buildkite.context import BuildContext
    from deployments.specs import TRAIN_DEPLOYMENT
    from params import load_params

    run = new_run(SMALL)
    build = BuildContext(number=run.number, pipeline=PIPELINE, organization=ORG)
    # An hour out, so the worker leaves it alone.
    flow_run = run_deployment(
        TRAIN_DEPLOYMENT,
        timeout=0,
        tags=["buildkite"],
        scheduled_time=datetime.now(UTC) + timedelta(hours=1),
        parameters={
            "params": load_params(None, SMALL).model_dump(mode="json"),
            "model_id": build.model_id,
            "build": build.model_dump(mode="json"),
        },
    )
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Cancelled(message="cancelled from the UI"))

    meta = run.wait_unblocked("training_finished", 60)
    assert meta["training-status"] == "failed"
    assert meta["metrics"] == "training failed: CANCELLED: cancelled from the UI"
    assert run.annotations()["trainkite-training"]["style"] == "error"


def test_a_run_no_worker_ever_starts_releases_the_build(new_run, process_worker):
    """Sent to a pool no worker polls (here: the ECS pool): no flow process, no heartbeat, no hook. The
    unstarted-run automation marks it Crashed after its timeout, which releases the build."""
    import uuid

    from prefect import get_client
    from prefect.deployments import run_deployment

    from buildkite.context import BuildContext
    from deployments.automations import unstarted_run_automation
    from deployments.specs import BUILDKITE_TAG, TRAIN_GPU_DEPLOYMENT
    from params import load_params

    run = new_run(SMALL)
    build = BuildContext(number=run.number, pipeline=PIPELINE, organization=ORG)
    # The applied automation waits 30 min; this one watches only this test's run, and briefly.
    tag = f"never-starts-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        automation_id = client.create_automation(unstarted_run_automation(15, tag=tag, name=f"test-{tag}"))
    try:
        flow_run = run_deployment(
            TRAIN_GPU_DEPLOYMENT,
            timeout=0,
            tags=[BUILDKITE_TAG, tag],
            parameters={
                "params": load_params(None, SMALL).model_dump(mode="json"),
                "model_id": build.model_id,
                "build": build.model_dump(mode="json"),
            },
        )
        meta = run.wait_unblocked("training_finished", 120)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_automation(automation_id)
    assert meta["training-status"] == "failed"
    assert meta["metrics"].startswith("training failed: CRASHED: Did not start within 15 s"), meta["metrics"]
    assert run.annotations()["trainkite-training"]["style"] == "error"
    state = read_flow_run(flow_run.id).state
    assert state.is_crashed() and "no worker is polling" in state.message


def test_a_build_of_another_commit_than_the_workers_code_is_refused_before_training(
    bk_fake, process_worker, e2e_home, tmp_path
):
    """The agent checked out a commit the worker's code is not: the run refuses before it fetches a row, and
    the build is released as failed with both commits named."""
    other = git_checkout(tmp_path / "other")
    run = PipelineRun(
        bk_fake, bk_fake.create_build(ORG, PIPELINE), e2e_home, other, {"TRAINKITE_SET": "\n".join(SMALL)}
    )
    flow_run_id = _launch(run)
    meta = run.wait_unblocked("training_finished", TRAINING_TIMEOUT)
    assert meta["training-status"] == "failed"
    assert "this worker's code is commit " + repo_head() in meta["metrics"], meta["metrics"]
    assert run.annotations()["trainkite-training"]["style"] == "error"
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert {t.name.rsplit("-", 1)[0] for t in tasks} == {"check_code"}, "nothing ran after the refusal"
