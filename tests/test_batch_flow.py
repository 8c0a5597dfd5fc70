"""The Batch flow against moto's server (simple batch mode): submit, wait, surface the end."""

import pytest

from tasks.batch import BatchJobFailed
from tests.test_batch import batch_aws, gpu_queue, moto_url  # noqa: F401  (fixtures)


def _run(params, gpu_queue, model_id):  # noqa: F811
    from flows.batch import train_on_batch

    return train_on_batch(
        params=params,
        model_id=model_id,
        job_queue=gpu_queue["queue"],
        job_definition=gpu_queue["job_definition"],
        poll_seconds=0.05,
        timeout_seconds=20,
    )


def test_batch_flow_submits_the_training_command_and_waits(prefect_api, gpu_queue, params_factory):  # noqa: F811
    params = params_factory()
    out = _run(params, gpu_queue, "batch-ok-1")
    assert out["status"] == "SUCCEEDED" and out["model_id"] == "batch-ok-1"
    job = gpu_queue["batch"].describe_jobs(jobs=[out["job_id"]])["jobs"][0]
    command = job["container"]["command"]
    assert command[:4] == ["trainkite", "train", "--model-id", "batch-ok-1"]
    assert command[command.index("--params-json") + 1] == params.model_dump_json()


def test_batch_flow_fails_with_the_reason_and_log_stream(prefect_api, gpu_queue, params_factory, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
    with pytest.raises(BatchJobFailed, match="FAILED"):
        _run(params_factory(), gpu_queue, "batch-fail-1")


def test_a_builds_image_gets_a_job_definition_of_its_own(prefect_api, gpu_queue, params_factory):  # noqa: F811
    """SubmitJob cannot override the image: the flow registers `<base>-img-<hash>` from the stack's definition with
    only the image changed, reuses it for the same image, and never touches the base definition."""
    from flows.batch import train_on_batch

    batch = gpu_queue["batch"]
    base = batch.describe_job_definitions(jobDefinitions=[gpu_queue["job_definition"]])["jobDefinitions"][0]

    def run(image, model_id):
        out = train_on_batch(
            params=params_factory(),
            model_id=model_id,
            job_queue=gpu_queue["queue"],
            job_definition=gpu_queue["job_definition"],
            poll_seconds=0.05,
            timeout_seconds=20,
            image=image,
        )
        job = batch.describe_jobs(jobs=[out["job_id"]])["jobs"][0]
        return job, batch.describe_job_definitions(jobDefinitions=[job["jobDefinition"]])["jobDefinitions"][0]

    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/trainkite-train:0123abc"
    job, mine = run(image, "batch-img-1")
    assert job["status"] == "SUCCEEDED" and mine["containerProperties"]["image"] == image  # moto's job has no image
    assert mine["jobDefinitionName"].startswith(f"{base['jobDefinitionName']}-img-")
    same = {k: v for k, v in base["containerProperties"].items() if k != "image"}
    assert {k: mine["containerProperties"][k] for k in same} == same, "resources, roles, secrets, logs unchanged"
    assert mine["retryStrategy"] == base["retryStrategy"] and mine["timeout"] == base["timeout"]

    again, reused = run(image, "batch-img-2")
    assert reused["jobDefinitionArn"] == mine["jobDefinitionArn"], "one definition per image"
    _, other = run(image.replace("0123abc", "4567def"), "batch-img-3")
    assert other["jobDefinitionName"] != mine["jobDefinitionName"]

    newest = batch.describe_job_definitions(jobDefinitionName=base["jobDefinitionName"], status="ACTIVE")
    assert (
        max(newest["jobDefinitions"], key=lambda d: d["revision"])["containerProperties"]["image"]
        == base["containerProperties"]["image"]
    ), "the stack's definition keeps its image"


def test_a_missing_base_definition_is_named(prefect_api, gpu_queue, params_factory):  # noqa: F811
    from flows.batch import train_on_batch
    from tasks.batch import BatchJobError

    with pytest.raises(BatchJobError, match="'no-such-definition' not found or not ACTIVE"):
        train_on_batch(
            params=params_factory(),
            model_id="batch-img-x",
            job_queue=gpu_queue["queue"],
            job_definition="no-such-definition",
            poll_seconds=0.05,
            timeout_seconds=5,
            image="img:1",
        )
