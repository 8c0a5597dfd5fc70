"""Thin Prefect tasks over `tasks.deploy`, `tasks.package` and `tasks.deploy_log` for the deploy flow.

Policy lives here: which store and clients a step uses, retries for the idempotent S3 copy. No retries
on SageMaker changes: a half-applied endpoint update must be looked at, not repeated blindly.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from params.model import Params
from tasks import deploy_log, package
import tasks.deploy
from trainkite.home import runs_dir
from trainkite.store import ArtifactStore, open_store


def _store(params: Params) -> ArtifactStore:
    return open_store(params.artifacts.root)


def sagemaker_clients():
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    control = Config(retries={"mode": "standard", "max_attempts": 5})
    # AWS's advice for invocations that can take up to 60 s: a 70 s read timeout, no blind retries.
    runtime = Config(retries={"mode": "standard", "max_attempts": 1}, read_timeout=70)
    return session.client("sagemaker", config=control), session.client("sagemaker-runtime", config=runtime)


@task(name="verify_model", cache_policy=NONE)
def verify_model(params: Params, model_id: str) -> tasks.deploy.Candidate:
    return tasks.deploy.load_candidate(_store(params), model_id)


@task(name="live_deployment", cache_policy=NONE)
def live_deployment(params: Params, target: str, endpoint: str) -> dict | None:
    return deploy_log.live(deploy_log.read_log(_store(params)), target, endpoint)


@task(name="check_guards", cache_policy=NONE)
def check_guards(candidate: tasks.deploy.Candidate, live: dict | None, allow_older: bool) -> None:
    tasks.deploy.check_not_older(candidate, live, allow_older)


@task(name="champion_metrics", cache_policy=NONE)
def champion_metrics(params: Params, live: dict | None) -> dict:
    if not live:
        return {}
    from trainkite.manifest import find_model, read_manifest

    store = _store(params)
    try:
        return read_manifest(store, find_model(store, live["model_id"])).get("metrics", {})
    except Exception:  # the champion's artifacts may be gone; the approval page says so instead
        return {}


@task(name="package", cache_policy=NONE)
def build_package(candidate: tasks.deploy.Candidate) -> dict:
    dest = runs_dir() / candidate.model_id / "deploy" / package.ARCHIVE_NAME
    return package.build_archive(Path(candidate.folder), candidate.manifest, dest)


@task(name="upload_to_production", retries=2, retry_delay_seconds=5, cache_policy=NONE)
def upload(params: Params, archive: dict, candidate: tasks.deploy.Candidate) -> dict:
    return tasks.deploy.upload_archive(tasks.deploy.production_store(params.deploy.production_root), archive, candidate)


@task(name="create_sagemaker_model", cache_policy=NONE)
def create_sagemaker_model(params: Params, candidate: tasks.deploy.Candidate, model_data: dict) -> dict:
    sm, _ = sagemaker_clients()
    name = tasks.deploy.resource_name(candidate.model_id)
    return tasks.deploy.create_model_and_config(
        sm,
        name=name,
        image=tasks.deploy.docker_image(candidate, params.deploy.image),
        role_arn=params.deploy.execution_role_arn,
        model_data_url=model_data["uri"],
        env=tasks.deploy.serving_env(candidate.model_id, model_data["uri"]),
        tags=tasks.deploy.resource_tags(candidate),
        instance_type=params.deploy.instance_type,
        instance_count=params.deploy.instance_count,
    )


@task(name="roll_out", cache_policy=NONE)
def roll_out(params: Params, candidate: tasks.deploy.Candidate, endpoint: str, resources: dict) -> dict:
    sm, runtime = sagemaker_clients()
    delay = params.deploy.wait_delay_s
    return tasks.deploy.roll_out(
        sm,
        runtime,
        endpoint=endpoint,
        config=resources["config"],
        model_id=candidate.model_id,
        tags=tasks.deploy.resource_tags(candidate),
        delay_s=delay,
        timeout_s=params.deploy.wait_timeout_s,
    )


@task(name="delete_superseded", cache_policy=NONE)
def delete_superseded(previous_config: str | None, live: dict | None) -> list[str]:
    # Only what trainkite itself put live: a config someone made by hand is not ours to delete.
    if not previous_config or not live or live.get("endpoint_config") != previous_config:
        return []
    sm, _ = sagemaker_clients()
    return tasks.deploy.delete_superseded(sm, previous_config)


@task(name="record_deployment", retries=2, retry_delay_seconds=2, cache_policy=NONE)
def record(
    params: Params,
    candidate: tasks.deploy.Candidate,
    target: str,
    endpoint: str,
    status: str,
    live: dict | None,
    fields: dict,
) -> dict:
    from prefect.runtime import flow_run

    entry = deploy_log.new_record(
        model_id=candidate.model_id,
        model_name=candidate.model_name,
        target=target,
        endpoint=endpoint,
        status=status,
        model_created_at=candidate.created_at,
        metrics=candidate.metrics,
        previous_model_id=live["model_id"] if live else None,
        flow_run_id=flow_run.id,
        **fields,
    )
    deploy_log.write(_store(params), entry)
    return entry
