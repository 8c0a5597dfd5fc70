"""Train on AWS Batch GPU: one job runs the same `trainkite train`; the flow waits and reports its end."""

from __future__ import annotations

from prefect import flow

from buildkite.context import BuildContext
from flows.hooks import release_build_on_failure, stop_if_build_canceled
from params.model import DEFAULT_PARAMS_FILE, Params, load_params
from flows import batch_steps
from trainkite.ids import resolve_model_id


@flow(
    name="train-batch",
    on_failure=[release_build_on_failure],
    on_crashed=[release_build_on_failure],
    on_cancellation=[release_build_on_failure],
)
def train_on_batch(
    params: Params = load_params(DEFAULT_PARAMS_FILE),
    model_id: str | None = None,
    build: BuildContext | None = None,
    job_queue: str = "trainkite-gpu",
    job_definition: str = "trainkite-train-gpu",
    poll_seconds: float = 30.0,
    timeout_seconds: float = 6 * 3600.0,
    image: str | None = None,
) -> dict:
    """Submit one training job to an AWS Batch GPU queue and wait for it.

    Args:
        params: Training parameters (defaults from params/sentiment.toml).
        model_id: Model ID (a retried job resumes it from its checkpoint). Empty = new ID.
        build: The Buildkite build that started this run, if any.
        job_queue: Batch job queue (stack output BatchJobQueueArn).
        job_definition: Batch job definition (stack output BatchJobDefinitionArn).
        poll_seconds: How often to ask Batch for the job's status.
        timeout_seconds: Give up waiting after this long.
        image: Train in this image (the build's commit) instead of the job definition's. Empty = the definition's.
    """
    model_id = resolve_model_id(model_id, build)
    with stop_if_build_canceled(build):
        definition = batch_steps.job_definition(job_definition, image)
        job_id = batch_steps.submit(params, model_id, build, job_queue, definition)
        return {"model_id": model_id, **batch_steps.wait(job_id, poll_seconds, timeout_seconds)}
