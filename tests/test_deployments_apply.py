"""`deployments apply` against the session's real Prefect server: idempotent, typed UI form, drift
repaired, and a run of the process deployment is picked up by a real worker and finishes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deployments.automations import FAILURE_EVENTS, RELEASE_AUTOMATION, STALE_AUTOMATION, UNSTARTED_AUTOMATION
from deployments.specs import (
    DEPLOYMENTS,
    ECS_POOL,
    PROCESS_POOL,
    RELEASE_DEPLOYMENT,
    RETRAIN_DEPLOYMENT,
    TRAIN_DEPLOYMENT,
    TRAIN_GPU_DEPLOYMENT,
)
from params.model import Params
from tests.buildkite_e2e_helpers import REPO, read_flow_run
from tests.process_helpers import wait_for

pytest_plugins = ["tests.fixtures_buildkite_e2e"]


def _client():
    from prefect import get_client

    return get_client(sync_client=True)


def _snapshot() -> dict:
    """Every object apply manages, as stored. Fields a polling worker moves on its own (a deployment's
    and a pool's `updated`, `last_polled` and `status`) are left out: a worker of another module may poll
    between two snapshots, and that is not apply writing."""
    polled = {"updated", "last_polled", "status"}
    with _client() as client:
        out = {}
        for spec in DEPLOYMENTS:
            try:
                d = client.read_deployment_by_name(spec.full_name)
            except Exception:
                continue
            out[spec.full_name] = (str(d.id), d.model_dump(mode="json", exclude=polled))
        for name in (PROCESS_POOL, ECS_POOL):
            pool = client.read_work_pool(name)
            out[name] = (str(pool.id), pool.model_dump(mode="json", exclude=polled))
        for name in (RELEASE_AUTOMATION, STALE_AUTOMATION, UNSTARTED_AUTOMATION):
            [automation] = client.read_automations_by_name(name)
            out[name] = (str(automation.id), automation.model_dump(mode="json"))
    return out


def test_a_second_apply_changes_nothing(applied):
    before = _snapshot()
    again = __import__("deployments.apply", fromlist=["apply"]).apply()
    assert again["changed"] is False
    statuses = {e["name"]: e["status"] for s in ("pools", "deployments", "automations") for e in again[s]}
    assert set(statuses.values()) <= {"unchanged", "skipped"}, statuses
    assert statuses[TRAIN_DEPLOYMENT] == statuses[RELEASE_DEPLOYMENT] == "unchanged"
    assert _snapshot() == before


def test_drift_is_reported_then_repaired(applied):
    from prefect.client.schemas.actions import DeploymentUpdate

    from deployments.apply import apply

    with _client() as client:
        deployment = client.read_deployment_by_name(TRAIN_DEPLOYMENT)
        client.update_deployment(deployment.id, DeploymentUpdate(description="edited in the UI"))
    plan = apply(dry_run=True)
    entry = next(e for e in plan["deployments"] if e["name"] == TRAIN_DEPLOYMENT)
    assert (entry["status"], entry["changed"]) == ("would update", ["description"])
    assert next(e for e in apply()["deployments"] if e["name"] == TRAIN_DEPLOYMENT)["status"] == "updated"
    assert apply(dry_run=True)["changed"] is False


def test_train_deployment_shape_and_typed_parameter_form(applied):
    with _client() as client:
        d = client.read_deployment_by_name(TRAIN_DEPLOYMENT)
        ecs = client.read_deployment_by_name(TRAIN_GPU_DEPLOYMENT)
        ecs_pool = client.read_work_pool(ECS_POOL)
    assert (d.work_pool_name, d.entrypoint, d.path) == (PROCESS_POOL, "flows/train.py:train", str(REPO))
    assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
    assert d.job_variables["env"]["WANDB_MODE"] == "offline" and d.enforce_parameter_schema
    assert d.global_concurrency_limit.limit == 2 and d.description
    assert ecs.work_pool_name == ECS_POOL and ecs.job_variables["env"]["WANDB_MODE"] == "online"
    assert "gpu_count" in ecs_pool.base_job_template["variables"]["properties"]

    schema = d.parameter_openapi_schema
    # `build` (set by the launcher) and the deploy section (the deploy flow's) are not on the form.
    assert list(schema["properties"]) == ["params", "model_id", "tags"]
    assert schema["properties"]["params"]["description"].startswith("Training parameters")
    # params/sentiment.toml leaves the epochs unset: the form shows it empty, the run resolves it from the data.
    assert schema["properties"]["params"]["default"]["train"]["epochs"] is None
    assert schema["properties"]["params"]["default"]["train"]["seed"] == 1234
    defs = schema["definitions"]
    assert set(defs["Params"]["properties"]) == set(Params.model_fields) - {"deploy"}
    # Every field of every section reaches the form with its description (angle brackets escaped for the
    # UI's Markdown), type and default.
    from deployments.specs import _escape_markdown

    for section, info in Params.model_fields.items():
        if section == "deploy":
            continue
        model = info.annotation
        props = defs[model.__name__]["properties"]
        for name, field in model.model_fields.items():
            assert props[name]["description"] == _escape_markdown(field.description), f"{section}.{name}"
            assert props[name].get("default") == field.default, f"{section}.{name}"
    [epochs, unset] = defs["TrainParams"]["properties"]["epochs"]["anyOf"]
    assert (epochs["type"], epochs["minimum"], epochs["maximum"], unset["type"]) == ("integer", 1, 1000, "null")
    assert defs["TrainParams"]["properties"]["device"]["enum"] == ["auto", "cpu", "cuda"]


def test_release_automations_point_at_the_release_deployment(applied):
    with _client() as client:
        release = client.read_deployment_by_name(RELEASE_DEPLOYMENT)
        [automation] = client.read_automations_by_name(RELEASE_AUTOMATION)
        [stale] = client.read_automations_by_name(STALE_AUTOMATION)
        [unstarted] = client.read_automations_by_name(UNSTARTED_AUTOMATION)
    assert automation.enabled and automation.trigger.expect == set(FAILURE_EVENTS)
    related = automation.trigger.match_related
    assert related["prefect.resource.id"] in ("prefect.tag.buildkite", ["prefect.tag.buildkite"])
    [action] = automation.actions
    assert action.type == "run-deployment" and action.deployment_id == release.id
    assert stale.trigger.posture == "Proactive" and stale.actions[0].type == "change-flow-run-state"
    assert unstarted.trigger.posture == "Proactive" and unstarted.trigger.within.total_seconds() == 1800
    assert unstarted.trigger.after == {"prefect.flow-run.Scheduled"}
    assert unstarted.actions[0].type == "change-flow-run-state" and unstarted.actions[0].state == "CRASHED"


def test_a_run_of_the_process_deployment_is_picked_up_by_a_worker_and_finishes(process_worker, params_factory):
    from prefect.deployments import run_deployment

    run = run_deployment(
        TRAIN_DEPLOYMENT,
        parameters={"params": params_factory().model_dump(mode="json")},
        timeout=0,
        tags=["deployments-apply-test"],
    )
    try:
        done = wait_for("the run to finish", lambda: (r := read_flow_run(run.id)).state.is_final() and r, 150)
    except AssertionError:
        raise AssertionError(process_worker.tail()) from None
    assert done.state.is_completed(), (done.state, process_worker.tail())


def test_cli_show_reports_nothing_to_do(applied):
    out = subprocess.run(
        [sys.executable, "-m", "cli", "deployments", "show", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["dry_run"] and not report["changed"]


@pytest.mark.parametrize("name", [TRAIN_DEPLOYMENT, RELEASE_DEPLOYMENT])
def test_specs_name_flows_that_exist(name):
    from deployments.apply import load_flow
    from deployments.specs import deployment

    assert load_flow(deployment(name)).name == name.split("/")[0]


def test_retrain_runs_on_a_weekly_cron_schedule(applied):
    from deployments.specs import RETRAIN_CRON, SCHEDULE_SLUG

    with _client() as client:
        d = client.read_deployment_by_name(RETRAIN_DEPLOYMENT)
        ours = [s for s in client.read_deployment_schedules(d.id) if s.slug == SCHEDULE_SLUG]
    assert len(ours) == 1 and ours[0].active
    assert ours[0].schedule.cron == RETRAIN_CRON == "0 3 * * 1"
