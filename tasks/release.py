"""Release the Buildkite build of a training run that failed, crashed or was cancelled (no Prefect here).

The release-build flow hands in the run as the Prefect API shows it (JSON dicts); this module
decides whether there is a build to release and which step failed, then reuses
`tasks.notify.notify_failure`, the same call the in-process hook makes. Whichever of the two
comes second finds the step already unblocked with identical values and does nothing more.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from buildkite.context import BuildContext
from tasks.notify import failure_reason, notify_failure

log = logging.getLogger("trainkite.release")

FAILURE_TYPES = frozenset({"FAILED", "CRASHED", "CANCELLED"})
_UNFINISHED_TYPES = frozenset({"RUNNING", "PENDING"})


class FailedRun(BaseModel):
    flow_run_id: str
    flow_run_name: str
    state_type: str
    state_message: str | None = None
    build: BuildContext | None = None
    model_id: str | None = None
    failed_step: str | None = None

    @property
    def label(self) -> str:
        return f"{self.flow_run_name} ({self.flow_run_id})"


def parse_flow_run_id(value: str) -> str:
    """Accept a bare UUID or an event resource ID (`prefect.flow-run.<uuid>`)."""
    return value.strip().removeprefix("prefect.flow-run.")


def _step_name(task_run: dict[str, Any]) -> str:
    # Task run names are `<task name>-<3 hex>`.
    return task_run["name"].rsplit("-", 1)[0]


def failed_step(task_runs: list[dict[str, Any]]) -> str | None:
    """The task that failed last; for a killed process, the task that was still running."""

    def state_type(tr):
        return (tr.get("state") or {}).get("type")

    def when(tr):
        return tr.get("end_time") or tr.get("start_time") or tr.get("expected_start_time") or ""

    failed = [tr for tr in task_runs if state_type(tr) in ("FAILED", "CRASHED")]
    if failed:
        return _step_name(max(failed, key=when))
    # SIGKILL leaves the running task Running forever: nobody is left to report it.
    unfinished = [tr for tr in task_runs if state_type(tr) in _UNFINISHED_TYPES]
    if unfinished:
        run = max(unfinished, key=lambda tr: tr.get("start_time") or tr.get("expected_start_time") or "")
        return f"{_step_name(run)} (was {(run.get('state') or {}).get('name', 'running')})"
    return None


def summarize(flow_run: dict[str, Any], task_runs: list[dict[str, Any]]) -> FailedRun:
    params = flow_run.get("parameters") or {}
    state = flow_run.get("state") or {}
    raw_build = params.get("build")
    return FailedRun(
        flow_run_id=str(flow_run["id"]),
        flow_run_name=flow_run.get("name") or "",
        state_type=state.get("type") or "UNKNOWN",
        state_message=state.get("message"),
        build=BuildContext.model_validate(raw_build) if raw_build else None,
        model_id=params.get("model_id"),
        failed_step=failed_step(task_runs),
    )


def release(run: FailedRun) -> str:
    """Annotate the build and release its block step; returns what happened, for the flow's result."""
    if run.build is None:
        log.info("flow run %s has no Buildkite build: nothing to release", run.label)
        return "skipped: no build"
    if run.state_type not in FAILURE_TYPES:
        # A retried run that is running again, or a late event: its build is not ours to release.
        log.info("flow run %s is %s now, not failed: nothing to release", run.label, run.state_type)
        return f"skipped: run is {run.state_type}"
    model_id = run.model_id or run.build.model_id
    outcome = notify_failure(
        run.build,
        model_id=model_id,
        flow_run=run.label,
        reason=failure_reason(run.state_type, run.state_message),
        failed_step=run.failed_step,
    )
    if outcome != "released":
        return outcome
    log.info(
        "released %s of build %s #%s (flow run %s %s, step %s)",
        run.build.step_key,
        run.build.pipeline,
        run.build.number,
        run.label,
        run.state_type,
        run.failed_step or "unknown",
    )
    return "released"
