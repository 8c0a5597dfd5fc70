"""State hooks: a failed, crashed or cancelled training run must never leave its Buildkite build waiting.

These hooks run in the flow's own process; when that process is killed they cannot run, so
the `release-build` automation (deployments/) does the same from the Prefect server's side.
"""

from __future__ import annotations

import logging

from buildkite.context import BuildContext
from tasks.notify import failure_reason, notify_failure

log = logging.getLogger("trainkite.hooks")


def release_build_on_failure(flow, flow_run, state) -> None:
    params = flow_run.parameters or {}
    raw = params.get("build")
    if not raw:
        return
    build = raw if isinstance(raw, BuildContext) else BuildContext.model_validate(raw)
    model_id = params.get("model_id") or build.model_id
    try:
        notify_failure(build, model_id=model_id, flow_run=f"{flow_run.name} ({flow_run.id})",
                       reason=failure_reason(state.type.value, state.message))
    except Exception as err:  # never mask the run's own failure
        log.error("could not tell Buildkite about the failure: %s", err)
