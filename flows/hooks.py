"""A training run and its Buildkite build end together.

- State hooks: a failed, crashed or cancelled run must never leave its build waiting. They run in
  the flow's own process; when that process is killed they cannot run, so the `release-build`
  automation (deployments/) does the same from the Prefect server's side.
- `stop_if_build_canceled`: a build canceled in Buildkite cancels its run, as the Prefect UI's
  Cancel would; the run's worker then stops the process or the ECS task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from buildkite.context import BuildContext
from tasks.build_watch import BuildWatch, watch_interval
from tasks.notify import client_for, failure_reason, notify_failure

log = logging.getLogger("trainkite.hooks")


def release_build_on_failure(flow, flow_run, state) -> None:
    params = flow_run.parameters or {}
    raw = params.get("build")
    if not raw:
        return
    build = raw if isinstance(raw, BuildContext) else BuildContext.model_validate(raw)
    model_id = params.get("model_id") or build.model_id
    try:
        notify_failure(
            build,
            model_id=model_id,
            flow_run=f"{flow_run.name} ({flow_run.id})",
            reason=failure_reason(state.type.value, state.message),
        )
    except Exception as err:  # never mask the run's own failure
        log.error("could not tell Buildkite about the failure: %s", err)


def _cancel_flow_run(flow_run_id: str, reason: str) -> None:
    from prefect import get_client
    from prefect.states import Cancelling

    # Not forced: a run that reached a final state meanwhile keeps it (the server refuses the transition).
    with get_client(sync_client=True) as client:
        result = client.set_flow_run_state(flow_run_id, Cancelling(message=reason))
    if result.status.value != "ACCEPT":
        log.info("flow run %s not cancelled (%s): %s", flow_run_id, result.status.value, result.details)


@contextmanager
def stop_if_build_canceled(build: BuildContext | None) -> Iterator[None]:
    """While the steps run, look at the build (TRAINKITE_BUILD_WATCH_SECONDS, default 60; 0 = off) and cancel
    this run when the build is canceled. Only runs a worker started are watched: a cancel is carried out by
    whatever supervises the run, and a run called in-process (the `trainkite train` inside a Batch job) has
    nobody; its train-batch run watches instead and terminates the job."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    interval = watch_interval()
    if build is None or not interval or run_id is None or os.environ.get("PREFECT__FLOW_RUN_ID") != run_id:
        yield
        return
    client = client_for(build)
    with BuildWatch(
        lambda: client.get_build(build.number),
        lambda why: _cancel_flow_run(run_id, why),
        interval,
        label=f"build #{build.number} of {build.organization}/{build.pipeline}",
    ):
        yield
