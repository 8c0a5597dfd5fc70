"""The deploy pipeline: verify → guard → (approve) → package → copy to prod → model + config → roll out → record."""

from __future__ import annotations

from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Failed, State

from params.model import DEFAULT_PARAMS_FILE, Params, load_params
from flows import deploy_steps as steps
from tasks.deploy import approval_markdown, target_endpoint


class Approval(RunInput):
    """The resume form a reviewer fills in on the paused run."""

    approve: bool = False
    note: str = ""


@flow(name="deploy")
def deploy(
    model_id: str,
    target: Literal["local", "sagemaker"] = "sagemaker",
    params: Params = load_params(DEFAULT_PARAMS_FILE),
    approved_by: str | None = None,
    require_approval: bool = False,
    approval_timeout_s: int = 3600,
    allow_older: bool = False,
    local_port: int = 8080,
) -> dict | State:
    """Put one published, verified model live on a target.

    Args:
        model_id: The model to deploy (see `trainkite models`).
        target: `sagemaker` (endpoint from params.deploy) or `local` (record it; `trainkite serve` serves it).
        params: Where the models are (artifacts.root) and the deploy settings (deploy.*).
        approved_by: Who approved this deploy (recorded in the deployment log).
        require_approval: Pause for a reviewer's approve/reject on the Prefect UI before deploying.
        approval_timeout_s: No answer within this long means not deployed.
        allow_older: Deploy even if the model is older than the live one (a deliberate rollback).
        local_port: Port of the local target's `trainkite serve`.
    """
    candidate = steps.verify_model(params, model_id)
    endpoint = target_endpoint(target, params.deploy.endpoint_name, candidate.model_name, local_port)
    live = steps.live_deployment(params, target, endpoint)
    steps.check_guards(candidate, live, allow_older)
    approval = {"approved_by": approved_by}
    if require_approval:
        answer = _await_approval(params, candidate, live, target, endpoint, approval_timeout_s)
        if answer is None:
            # Once the pause expires, Prefect's server may fail the run at any moment (its pause-expiry
            # service) and refuses new task runs: record with the plain function, outside orchestration,
            # and end Failed ourselves so the run's final state does not depend on that service's timing.
            steps.record.fn(params, candidate, target, endpoint, "approval_timeout", live, approval)
            return Failed(
                message=f"nobody approved {candidate.model_id} within {approval_timeout_s} s: not deployed",
                data={"deployed": False, "status": "approval_timeout"},
            )
        if not answer.approve:
            entry = steps.record(
                params, candidate, target, endpoint, "rejected", live, {**approval, "approval_note": answer.note}
            )
            return {"deployed": False, **entry}
        approval = {"approved_by": approved_by or "prefect-ui", "approval_note": answer.note}
    if target == "local":
        entry = steps.record(params, candidate, target, endpoint, "deployed", live, approval)
        return {"deployed": True, **entry}
    try:
        archive = steps.build_package(candidate)
        model_data = steps.upload(params, archive, candidate)
        resources = steps.create_sagemaker_model(params, candidate, model_data)
        rollout = steps.roll_out(params, candidate, endpoint, resources)
    except Exception as err:
        steps.record(
            params,
            candidate,
            target,
            endpoint,
            "failed",
            live,
            {**approval, "error": str(err), **getattr(err, "details", {})},
        )
        raise
    deleted = steps.delete_superseded(rollout["previous_config"], live)
    entry = steps.record(
        params,
        candidate,
        target,
        endpoint,
        "deployed",
        live,
        {
            **approval,
            "endpoint_config": resources["config"],
            "sagemaker_model": resources["model"],
            "model_data_url": model_data["uri"],
            "model_data_sha256": model_data["sha256"],
            "action": rollout["action"],
            "previous_config": rollout["previous_config"],
            "deleted": deleted,
        },
    )
    return {"deployed": True, **entry}


def _await_approval(params: Params, candidate, live, target: str, endpoint: str, timeout_s: int) -> Approval | None:
    """Pause the run until a reviewer answers on the UI; None when nobody does in time."""
    champion = steps.champion_metrics(params, live)
    page = approval_markdown(candidate, live, champion, target, endpoint)
    create_markdown_artifact(key="deploy-approval", markdown=page, description=f"deploy {candidate.model_id}?")
    form = Approval.with_initial_data(description=page, approve=False, note="")
    try:
        # pause_flow_run polls every poll_interval seconds; keep short timeouts (tests, demos) responsive.
        return pause_flow_run(wait_for_input=form, timeout=timeout_s, poll_interval=max(1, min(10, timeout_s // 10)))
    except FlowPauseTimeout:
        return None
