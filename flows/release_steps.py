"""Thin Prefect tasks of the release-build flow: read the dead run from the API, release its build."""

from __future__ import annotations

from uuid import UUID

from prefect import get_client, task
from prefect.cache_policies import NONE

import tasks.release


@task(name="read_failed_run", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def read_failed_run(flow_run_id: str) -> tasks.release.FailedRun:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    run_id = UUID(tasks.release.parse_flow_run_id(flow_run_id))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    return tasks.release.summarize(flow_run.model_dump(mode="json"), [t.model_dump(mode="json") for t in task_runs])


# The Buildkite client retries transient HTTP errors itself; a retry here covers the rest once.
@task(name="release", retries=1, retry_delay_seconds=5, cache_policy=NONE)
def release(run: tasks.release.FailedRun) -> str:
    return tasks.release.release(run)
