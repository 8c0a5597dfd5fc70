"""The Batch flow against moto's server (simple batch mode): submit, wait, surface the end."""

import pytest

from tasks.batch import BatchJobFailed
from tests.test_batch import batch_aws, gpu_queue, moto_url  # noqa: F401  (fixtures)


def _run(params, gpu_queue, model_id):  # noqa: F811
    from flows.batch import train_on_batch

    return train_on_batch(params=params, model_id=model_id, job_queue=gpu_queue["queue"],
                          job_definition=gpu_queue["job_definition"], poll_seconds=0.05, timeout_seconds=20)


def test_batch_flow_submits_the_training_command_and_waits(prefect_api, gpu_queue, params_factory):  # noqa: F811
    params = params_factory()
    out = _run(params, gpu_queue, "batch-ok-1")
    assert out["status"] == "SUCCEEDED" and out["model_id"] == "batch-ok-1"
    job = gpu_queue["batch"].describe_jobs(jobs=[out["job_id"]])["jobs"][0]
    command = job["container"]["command"]
    assert command[:4] == ["trainkite", "train", "--model-id", "batch-ok-1"]
    assert command[command.index("--params-json") + 1] == params.model_dump_json()


def test_batch_flow_fails_with_the_reason_and_log_stream(prefect_api, gpu_queue, params_factory,  # noqa: F811
                                                         monkeypatch):
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
    with pytest.raises(BatchJobFailed, match="FAILED"):
        _run(params_factory(), gpu_queue, "batch-fail-1")
