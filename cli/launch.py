"""`trainkite launch`: start the training deployment for this Buildkite build, at most once.

The launch step only starts the run and returns; the build then waits at the
`training_finished` block step, which the flow (or, if the flow dies, the release-build
automation) unblocks through the REST API. Holding an agent for the whole training would
cost an agent and billed minutes for hours (shared/reference/buildkite.md pitfall 4).

Retrying the step returns the same flow run: the idempotency key is the build's identity.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from buildkite.context import BuildContext
from deployments.specs import BATCH_FLOW, BUILDKITE_TAG, TRAIN_DEPLOYMENT
from params.model import Params, load_params
from trainkite.errors import TrainkiteError, UserInputError
from trainkite.ids import validate_model_id
from trainkite.lineage import git_output

log = logging.getLogger("trainkite.launch")

DEFAULT_DEPLOYMENT = TRAIN_DEPLOYMENT
ANNOTATION_CONTEXT = "trainkite-launch"
# Build identity the flow-run process may see as env (job variables are stored and shown in the UI:
# nothing secret here; the API token reaches the worker through its own environment or ECS secrets).
IDENTITY_ENV = (
    "BUILDKITE_BUILD_ID",
    "BUILDKITE_BUILD_NUMBER",
    "BUILDKITE_BUILD_URL",
    "BUILDKITE_BRANCH",
    "BUILDKITE_COMMIT",
    "BUILDKITE_ORGANIZATION_SLUG",
    "BUILDKITE_PIPELINE_SLUG",
    "BUILDKITE_SOURCE",
)


def env_overrides(env: Mapping[str, str]) -> list[str]:
    """`TRAINKITE_SET`: one `section.key=value` per line (build env, schedule env, New Build dialog)."""
    lines = (line.strip() for line in env.get("TRAINKITE_SET", "").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def resolve_params(params_file: str | Path | None, overrides: list[str], env: Mapping[str, str]) -> Params:
    # Explicit --set flags come last, so they win over the build's TRAINKITE_SET.
    return load_params(params_file or env.get("TRAINKITE_PARAMS") or None, env_overrides(env) + overrides)


def dirty_files(checkout: str | Path) -> list[str]:
    """Tracked files that differ from the commit (untracked files don't change what was committed)."""
    try:
        # --no-optional-locks: a status check must not rewrite the checkout's index.
        out = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserInputError(f"cannot check the checkout {str(checkout)!r} with git: {e}") from None
    if out.returncode != 0:
        raise UserInputError(
            f"cannot check the checkout {str(checkout)!r} with git: {out.stderr.strip() or out.stdout.strip()}"
        )
    return [line for line in out.stdout.splitlines() if line.strip()]


def require_clean_tree(checkout: str | Path) -> None:
    dirty = dirty_files(checkout)
    if dirty:
        shown = "\n  ".join(dirty[:20]) + ("\n  ..." if len(dirty) > 20 else "")
        raise UserInputError(
            f"the checkout {str(checkout)!r} has uncommitted changes to tracked files, so the model would not "
            f"match BUILDKITE_COMMIT:\n  {shown}\nA step before launch changed them; commit them or "
            "stop that step from writing into the checkout"
        )


def checkout_commit(checkout: str | Path) -> str | None:
    """The SHA the agent checked out: BUILDKITE_COMMIT may be a symbolic ref ("HEAD" from the UI's New Build)."""
    return git_output("rev-parse", "HEAD", cwd=checkout, timeout=60) or None


def idempotency_key(build: BuildContext) -> str:
    return f"buildkite-{build.organization}-{build.pipeline}-{build.number}"


# Build settings the run acts on: the override that lets a significantly worse model through review (the
# run records it in the model's lineage), and the deploy target whose champion the model is compared with.
SETTINGS_ENV = ("TRAINKITE_ALLOW_WORSE", "TRAINKITE_DEPLOY_TARGET", "TRAINKITE_CHAMPION_TARGET")


def job_env(env: Mapping[str, str], model_id: str) -> dict[str, str]:
    out = {k: env[k] for k in (*IDENTITY_ENV, *SETTINGS_ENV) if env.get(k)}
    out["TRAINKITE_MODEL_ID"] = model_id
    return out


def annotation(*, model_id: str, deployment: str, run_name: str, run_url: str | None) -> str:
    run = f"[{run_name}]({run_url})" if run_url else f"`{run_name}`"
    return (
        f"**Training started** for model `{model_id}`: Prefect flow run {run} "
        f"(deployment `{deployment}`).\n\nThis build waits at *Training finished* until the run "
        "reports back; a failed, crashed or cancelled run releases it with `training-status=failed`."
    )


def launch(*, params: Params, build: BuildContext | None, deployment: str, env: Mapping[str, str]) -> dict[str, Any]:
    """Create (or find, inside a build) the deployment's flow run; returns what the CLI prints."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.urls import url_for

    model_id = validate_model_id(build.model_id) if build else None
    kwargs: dict[str, Any] = {"tags": ["trainkite-launch"]}
    parameters = {
        "params": params.model_dump(mode="json"),
        "model_id": model_id,
        "build": build.model_dump(mode="json") if build else None,
    }
    if build is not None:
        job_variables: dict[str, Any] = {"env": job_env(env, model_id)}
        if env.get("TRAINKITE_TRAIN_IMAGE"):
            # The image an earlier step pushed for this commit, so the run trains the build's code (which the flow
            # checks before it trains, tasks/provenance.py): ECS runs it as the task's image; a Batch job cannot
            # override its definition's image, so train-batch registers a definition with it.
            if deployment.split("/", 1)[0] == BATCH_FLOW:
                parameters["image"] = env["TRAINKITE_TRAIN_IMAGE"]
            else:
                job_variables["image"] = env["TRAINKITE_TRAIN_IMAGE"]
        kwargs = {"idempotency_key": idempotency_key(build), "tags": [BUILDKITE_TAG], "job_variables": job_variables}
    try:
        run = run_deployment(deployment, parameters=parameters, timeout=0, **kwargs)
    except ObjectNotFound:
        raise TrainkiteError(
            f"Prefect deployment {deployment!r} not found at {os.environ.get('PREFECT_API_URL')}; "
            "run `trainkite deployments apply` against that server"
        ) from None
    url = url_for(run)
    result = {
        "flow_run_id": str(run.id),
        "flow_run_name": run.name,
        "state": run.state.name if run.state else None,
        "deployment": deployment,
        "model_id": model_id,
        "url": url,
        "idempotency_key": kwargs.get("idempotency_key"),
        "annotated": False,
    }
    if build is not None:
        result["annotated"] = _annotate(
            build, annotation(model_id=model_id, deployment=deployment, run_name=run.name, run_url=url)
        )
    return result


def _annotate(build: BuildContext, body: str) -> bool:
    from buildkite.client import BuildkiteClient, BuildkiteError

    # The run exists now; a missing link must not fail the step (a retry would find the same run anyway).
    try:
        BuildkiteClient(org=build.organization, pipeline=build.pipeline).annotate(
            build.number, body, context=ANNOTATION_CONTEXT, style="info"
        )
        return True
    except BuildkiteError as e:
        log.warning("could not annotate build #%s with the flow run link: %s", build.number, e)
        return False


def launch_from_env(
    params_file: str | Path | None, overrides: list[str], deployment: str, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    env = dict(os.environ) if env is None else env
    params = resolve_params(params_file, overrides, env)  # bad params: exit 2 before anything starts
    build = BuildContext.from_env(env)
    if build is not None:
        checkout = env.get("BUILDKITE_BUILD_CHECKOUT_PATH") or os.getcwd()
        require_clean_tree(checkout)
        resolved = checkout_commit(checkout)
        if resolved and resolved != build.commit:
            build = build.model_copy(update={"commit": resolved})
            env = {**env, "BUILDKITE_COMMIT": resolved}
        if not env.get("PREFECT_API_URL"):
            raise UserInputError(
                "PREFECT_API_URL is not set: inside a build, training must go to the team's "
                "Prefect server (set it, and PREFECT_API_AUTH_STRING or PREFECT_API_KEY, in "
                "the agent environment)"
            )
    else:
        from cli.prefect_server import ensure_api

        ensure_api()
    return launch(params=params, build=build, deployment=deployment, env=env)
