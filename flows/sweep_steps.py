"""Thin Prefect tasks of the sweep flow over tasks/sweep.py.

Each configuration is its own `train` flow run: here, a subflow called from a task (so a thread
pool can run several at once and each shows in the UI as a flow run of its own, tagged with the
sweep ID); in the cloud, a run of the GPU train deployment, at most `max_parallel` at a time through
a global concurrency limit named after the sweep. Metrics are read back from the published
manifest either way: a deployment run's return value lives in another container.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import get_client, tags, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from params.model import Params
import tasks.sweep
from trainkite.manifest import read_manifest
from trainkite.run import Run
from trainkite.store import open_store

LEADERBOARD_KEY = "sweep-leaderboard"


@task(name="plan_sweep", cache_policy=NONE)
def plan_sweep(
    params: Params, grid: dict[str, list[Any]], random: int | None, seed: int, max_parallel: int, sweep_id: str | None
) -> tasks.sweep.SweepPlan:
    return tasks.sweep.plan_sweep(params, grid, random, seed, max_parallel, sweep_id, dict(os.environ))


@task(name="open_concurrency_limit", cache_policy=NONE)
def open_limit(name: str, limit: int) -> str:
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit)
    return name


@task(name="close_concurrency_limit", cache_policy=NONE)
def close_limit(name: str) -> None:
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(name)


def _describe(err: BaseException | Any) -> str:
    return f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)


def _published(config: tasks.sweep.SweepConfig, flow_run_id: str) -> tasks.sweep.ConfigOutcome:
    run = Run.of(config.params, config.model_id)
    manifest = read_manifest(run.store, run.ref)
    return tasks.sweep.ConfigOutcome(
        index=config.index,
        status="completed",
        metrics=manifest.get("metrics", {}),
        flow_run_id=flow_run_id,
        artifact_uri=run.store.uri(run.prefix),
    )


def _as_subflow(config: tasks.sweep.SweepConfig, sweep_id: str) -> tasks.sweep.ConfigOutcome:
    from flows.train import train

    with tags(sweep_id):
        state = train.with_options(flow_run_name=config.model_id)(
            params=config.params, model_id=config.model_id, tags=[sweep_id], return_state=True
        )
    run_id = str(state.state_details.flow_run_id)
    if state.is_completed():
        return _published(config, run_id)
    return tasks.sweep.ConfigOutcome(
        index=config.index,
        status="failed",
        flow_run_id=run_id,
        error=_describe(state.result(raise_on_failure=False)) or state.message,
    )


def deployment_request(config: tasks.sweep.SweepConfig, sweep_id: str, deployment: str) -> dict[str, Any]:
    """Keyword arguments of `run_deployment` for one configuration."""
    return {
        "name": deployment,
        "parameters": {
            "params": config.params.model_dump(mode="json"),
            "model_id": config.model_id,
            "tags": [sweep_id],
        },
        "flow_run_name": config.model_id,
        "tags": [sweep_id],
        # A retried sweep gets the run it already started back instead of paying for a second GPU run.
        "idempotency_key": f"{sweep_id}-{config.name}",
        "timeout": None,
    }


def _as_deployment_run(
    config: tasks.sweep.SweepConfig, sweep_id: str, deployment: str, limit: str
) -> tasks.sweep.ConfigOutcome:
    from prefect.concurrency.sync import concurrency
    from prefect.deployments import run_deployment

    with concurrency(limit, occupy=1, strict=True):
        run = run_deployment(**deployment_request(config, sweep_id, deployment))
    if run.state is not None and run.state.is_completed():
        return _published(config, str(run.id))
    return tasks.sweep.ConfigOutcome(
        index=config.index,
        status="failed",
        flow_run_id=str(run.id),
        error=f"{run.state.name if run.state else 'unknown'}: {(run.state.message if run.state else '') or ''}".strip(),
    )


@task(name="run_config", cache_policy=NONE)
def run_config(
    config: tasks.sweep.SweepConfig, sweep_id: str, deployment: str | None, limit: str | None
) -> tasks.sweep.ConfigOutcome:
    # Never raises: one configuration's failure is a row of the leaderboard, not the end of the sweep.
    try:
        if deployment:
            return _as_deployment_run(config, sweep_id, deployment, limit or sweep_id)
        return _as_subflow(config, sweep_id)
    except Exception as err:
        return tasks.sweep.ConfigOutcome(index=config.index, status="failed", error=_describe(err))


@task(name="record_sweep", cache_policy=NONE)
def record_sweep(
    plan: tasks.sweep.SweepPlan, outcomes: list[tasks.sweep.ConfigOutcome], deployment: str | None
) -> dict:
    store = open_store(plan.artifacts_root)
    record = tasks.sweep.sweep_record(plan, outcomes, deployment)
    record["record_uri"] = store.uri(tasks.sweep.record_key(plan.sweep_id))
    tasks.sweep.save_record(store, record)
    create_table_artifact(
        key=LEADERBOARD_KEY, table=tasks.sweep.flat_rows(record), description=tasks.sweep.leaderboard_markdown(record)
    )
    return record


@task(name="require_candidate", cache_policy=NONE)
def require_candidate(record: dict) -> str:
    if record["candidate"] is None:
        raise tasks.sweep.NoCandidate(
            f"no configuration of sweep {record['sweep_id']} completed; "
            f"see the leaderboard at {record.get('record_uri')}"
        )
    return record["candidate"]["model_id"]
