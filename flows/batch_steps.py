"""Thin Prefect tasks for training on AWS Batch: submit the job, wait for it, surface its end."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from buildkite.context import BuildContext
from params.model import Params
from tasks import batch


def training_command(params: Params, model_id: str) -> list[str]:
    # The same CLI a laptop runs; a retried job (Spot reclaim) re-runs it with the same model ID and
    # resumes from the checkpoint in the artifact store.
    return ["trainkite", "train", "--model-id", model_id, "--params-json", params.model_dump_json(), "--json"]


def build_env(build: BuildContext | None) -> dict[str, str]:
    if build is None:
        return {}
    env = {
        "BUILDKITE_BUILD_NUMBER": str(build.number),
        "BUILDKITE_PIPELINE_SLUG": build.pipeline,
        "BUILDKITE_ORGANIZATION_SLUG": build.organization,
        "TRAINKITE_UNBLOCK_STEP_KEY": build.step_key,
    }
    for key, value in (
        ("BUILDKITE_COMMIT", build.commit),
        ("BUILDKITE_BRANCH", build.branch),
        ("BUILDKITE_BUILD_URL", build.url),
        ("BUILDKITE_SOURCE", build.source),
    ):
        if value:
            env[key] = value
    return env


@task(name="job_definition", cache_policy=NONE)
def job_definition(job_definition: str, image: str | None) -> str:
    """The stack's job definition, or (for a build that pushed its own image) one registered with that image."""
    if not image:
        return job_definition
    arn = batch.job_definition_for_image(job_definition, image)
    get_run_logger().info("Batch job definition for image %s: %s", image, arn)
    return arn


@task(name="submit_batch_job", cache_policy=NONE)
def submit(params: Params, model_id: str, build: BuildContext | None, job_queue: str, job_definition: str) -> str:
    job_id = batch.submit_training_job(
        job_name=f"train-{model_id}".replace(".", "-")[:128],
        job_queue=job_queue,
        job_definition=job_definition,
        command=training_command(params, model_id),
        environment=build_env(build),
    )
    get_run_logger().info("submitted Batch job %s for %s to %s", job_id, model_id, job_queue)
    return job_id


@task(name="wait_batch_job", cache_policy=NONE)
def wait(job_id: str, poll_seconds: float, timeout_seconds: float) -> dict:
    # Cancelled (the worker's SIGTERM arrives as TerminationSignal) or timed out: the build is released as
    # failed, so the job must not train on and then try to unblock it.
    result = batch.wait_for_job(
        job_id, poll_seconds=poll_seconds, timeout_seconds=timeout_seconds, terminate_if_abandoned=True
    )
    get_run_logger().info(
        "Batch job %s ended %s after %d attempt(s); log stream %s",
        job_id,
        result.status,
        result.attempts,
        result.log_stream_name,
    )
    result.raise_for_status()
    return {
        "job_id": job_id,
        "status": result.status,
        "attempts": result.attempts,
        "log_stream": result.log_stream_name,
    }
