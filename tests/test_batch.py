"""tasks/batch.py against moto's Batch (server mode, "simple batch": no Docker) and botocore Stubber.

moto facts this relies on (moto 5.2.x, see shared/reference/aws.md):
* simple batch is switched on per server with POST {"batch": {"use_docker": false}} to
  /moto-api/config; every job is then SUCCEEDED at submit time;
* MOTO_SIMPLE_BATCH_FAIL_AFTER is read with os.getenv *inside submit_job* on the server
  side (moto/batch_simple/models.py), so with the in-process ThreadedMotoServer a
  monkeypatch.setenv before submitting makes that job FAILED;
* moto stores retryStrategy/GPU requirements but never exercises them, and a failed
  simple-batch job has no statusReason (real Batch always gives one), so the reason
  propagation is also checked with realistic describe_jobs payloads through Stubber.
"""

from __future__ import annotations

import json
import urllib.request
import uuid

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.stub import ANY, Stubber
from botocore.validate import ParamValidator

from tasks.batch import (
    RETRY_STRATEGY,
    BatchJobFailed,
    BatchJobNotFound,
    BatchJobResult,
    BatchJobTimeout,
    job_definition_spec,
    submit_training_job,
    wait_for_job,
)

REGION = "us-east-1"
ACCOUNT = "123456789012"
NO_RETRIES = Config(retries={"max_attempts": 1})  # moto answers unimplemented paths with 500s
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/trainkite/train:0123abc"


def _post(url: str, payload: dict) -> None:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert 200 <= resp.status < 300, resp.status


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        _post(f"{url}/moto-api/config", {"batch": {"use_docker": False}})
        yield url
    finally:
        # moto's config is process-global: put the default back for other test modules.
        try:
            _post(f"{url}/moto-api/config", {"batch": {"use_docker": True}})
            _post(f"{url}/moto-api/reset", {})
        finally:
            server.stop()


@pytest.fixture
def batch_aws(moto_url, monkeypatch):
    """Env for boto3 -> this module's moto server (own server: the failure switch is read from os.environ)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    for var in ("AWS_PROFILE", "MOTO_SIMPLE_BATCH_FAIL_AFTER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    return moto_url


@pytest.fixture
def gpu_queue(batch_aws):
    """A Spot GPU compute environment + queue + GPU job definition shaped like the stack's."""
    suffix = uuid.uuid4().hex[:8]
    iam = boto3.client("iam", config=NO_RETRIES)
    ec2 = boto3.client("ec2", config=NO_RETRIES)
    batch = boto3.client("batch", config=NO_RETRIES)

    def role(name: str, service: str) -> str:
        doc = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
        return iam.create_role(RoleName=f"{name}-{suffix}", AssumeRolePolicyDocument=json.dumps(doc))["Role"]["Arn"]

    service_role = role("batch-service", "batch.amazonaws.com")
    instance_role = role("gpu-instance", "ec2.amazonaws.com")
    job_role = role("training-task", "ecs-tasks.amazonaws.com")
    execution_role = role("training-exec", "ecs-tasks.amazonaws.com")
    profile = iam.create_instance_profile(InstanceProfileName=f"gpu-instance-{suffix}")["InstanceProfile"]
    iam.add_role_to_instance_profile(
        InstanceProfileName=profile["InstanceProfileName"], RoleName=f"gpu-instance-{suffix}"
    )
    del instance_role

    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName=f"gpu-{suffix}", Description="gpu", VpcId=vpc)["GroupId"]

    ce = batch.create_compute_environment(
        computeEnvironmentName=f"trainkite-gpu-spot-{suffix}",
        type="MANAGED",
        state="ENABLED",
        serviceRole=service_role,
        computeResources={
            "type": "SPOT",
            "allocationStrategy": "SPOT_PRICE_CAPACITY_OPTIMIZED",
            "minvCpus": 0,
            "maxvCpus": 32,
            "instanceTypes": ["g5.xlarge", "g5.2xlarge", "g4dn.xlarge", "g4dn.2xlarge"],
            "subnets": [subnet],
            "securityGroupIds": [sg],
            "instanceRole": profile["Arn"],
            "ec2Configuration": [{"imageType": "ECS_AL2023_NVIDIA"}],
        },
    )["computeEnvironmentArn"]
    queue = batch.create_job_queue(
        jobQueueName=f"trainkite-gpu-{suffix}",
        state="ENABLED",
        priority=1,
        computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}],
    )["jobQueueArn"]
    spec = job_definition_spec(
        IMAGE,
        vcpus=4,
        memory_mib=14336,
        gpus=1,
        name=f"trainkite-train-gpu-{suffix}",
        job_role_arn=job_role,
        execution_role_arn=execution_role,
        secrets={"WANDB_API_KEY": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:trainkite/wandb-api-key-AbCdEf"},
        environment={"TRAINKITE_ARTIFACTS": "s3://trainkite-artifacts/models"},
        log_group="/trainkite/training",
    )
    job_definition = batch.register_job_definition(**spec)["jobDefinitionArn"]
    return {"batch": batch, "queue": queue, "job_definition": job_definition, "suffix": suffix}


# ---------------------------------------------------------------- job definition spec


def test_job_definition_spec_is_a_valid_register_job_definition_request():
    spec = job_definition_spec(
        IMAGE,
        vcpus=4,
        memory_mib=14336,
        gpus=1,
        execution_role_arn="arn:x",
        secrets={"WANDB_API_KEY": "arn:aws:secretsmanager:us-east-1:1:secret:w"},
    )
    model = botocore.session.get_session().get_service_model("batch")
    report = ParamValidator().validate(spec, model.operation_model("RegisterJobDefinition").input_shape)
    assert not report.has_errors(), report.generate_report()

    resources = {r["type"]: r["value"] for r in spec["containerProperties"]["resourceRequirements"]}
    assert resources == {"GPU": "1", "VCPU": "4", "MEMORY": "14336"}
    assert spec["platformCapabilities"] == ["EC2"]
    assert spec["timeout"]["attemptDurationSeconds"] >= 60
    # Spot reclaim -> RETRY, everything else -> EXIT (an unmatched exit would be retried).
    retry = spec["retryStrategy"]
    assert retry == RETRY_STRATEGY and retry["attempts"] == 3
    assert retry["evaluateOnExit"][0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}
    assert retry["evaluateOnExit"][-1] == {"onReason": "*", "action": "EXIT"}
    # secrets by ARN, never env values
    container = spec["containerProperties"]
    assert container["secrets"] == [
        {"name": "WANDB_API_KEY", "valueFrom": "arn:aws:secretsmanager:us-east-1:1:secret:w"}
    ]
    assert "environment" not in container


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retry_attempts": 11},
        {"timeout_seconds": 10},
        {"gpus": -1},
        {"environment": {"WANDB_API_KEY": "plain-text"}},
        {"secrets": {"WANDB_API_KEY": "arn:aws:secretsmanager:us-east-1:1:secret:w"}},  # no execution role
    ],
)
def test_job_definition_spec_rejects_bad_input(kwargs):
    base = {"vcpus": 4, "memory_mib": 14336, "gpus": 1}
    with pytest.raises(ValueError):
        job_definition_spec(IMAGE, **{**base, **kwargs})


# ---------------------------------------------------------------- against moto


def test_gpu_training_job_succeeds(gpu_queue):
    batch = gpu_queue["batch"]
    stored = batch.describe_job_definitions(jobDefinitions=[gpu_queue["job_definition"]])["jobDefinitions"][0]
    assert {"type": "GPU", "value": "1"} in stored["containerProperties"]["resourceRequirements"]
    assert stored["retryStrategy"]["attempts"] == 3

    command = ["trainkite", "train", "--params", "params/sentiment.toml", "--set", "training.epochs=1"]
    job_id = submit_training_job(
        job_name=f"sentiment-42-{gpu_queue['suffix']}",
        job_queue=gpu_queue["queue"],
        job_definition=gpu_queue["job_definition"],
        command=command,
        environment={"MODEL_ID": "sentiment-42", "BUILDKITE_BUILD_NUMBER": "42"},
        client=batch,
    )
    result = wait_for_job(job_id, client=batch, poll_seconds=0.05, timeout_seconds=10)

    assert isinstance(result, BatchJobResult)
    assert result.status == "SUCCEEDED" and result.succeeded
    assert result.job_id == job_id
    assert result.attempts == 1
    assert result.log_stream_name  # moto: "<job definition name>/default/<job id>"
    assert result.raise_for_status() is result

    job = batch.describe_jobs(jobs=[job_id])["jobs"][0]
    assert job["container"]["command"] == command
    env = {e["name"]: e["value"] for e in job["container"]["environment"]}
    assert env["MODEL_ID"] == "sentiment-42"


def test_default_clients_follow_aws_endpoint_url(gpu_queue):
    """No client passed: boto3 picks up AWS_ENDPOINT_URL (moto) by itself."""
    job_id = submit_training_job(
        job_name=f"default-client-{gpu_queue['suffix']}",
        job_queue=gpu_queue["queue"],
        job_definition=gpu_queue["job_definition"],
        command=["trainkite", "--help"],
        environment={},
    )
    assert wait_for_job(job_id, poll_seconds=0.05, timeout_seconds=10).status == "SUCCEEDED"


def test_failed_training_job_is_surfaced(gpu_queue, monkeypatch):
    batch = gpu_queue["batch"]
    # Read by moto's simple-batch backend at submit time, in this process (threaded server).
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")
    job_id = submit_training_job(
        job_name=f"sentiment-43-{gpu_queue['suffix']}",
        job_queue=gpu_queue["queue"],
        job_definition=gpu_queue["job_definition"],
        command=["trainkite", "train", "--params", "params/sentiment.toml"],
        environment={"MODEL_ID": "sentiment-43"},
        client=batch,
    )
    result = wait_for_job(job_id, client=batch, poll_seconds=0.05, timeout_seconds=10)
    assert result.status == "FAILED" and not result.succeeded
    assert result.log_stream_name
    with pytest.raises(BatchJobFailed) as info:
        result.raise_for_status()
    assert info.value.job_id == job_id
    assert result.log_stream_name in str(info.value)

    # moto gives a failed simple-batch job no statusReason; TerminateJob's reason is
    # stored and returned, so the reason path is exercised end to end too.
    batch.terminate_job(jobId=job_id, reason="Host EC2 (instance i-0abc) terminated.")
    result = wait_for_job(job_id, client=batch, poll_seconds=0.05, timeout_seconds=10)
    assert result.status_reason == "Host EC2 (instance i-0abc) terminated."
    with pytest.raises(BatchJobFailed, match=r"FAILED after 1 attempt\(s\): Host EC2 \(instance i-0abc\) terminated"):
        result.raise_for_status()


def test_unknown_job_id_is_a_clear_error(gpu_queue):
    with pytest.raises(BatchJobNotFound, match="not found"):
        wait_for_job(
            "00000000-0000-0000-0000-000000000000",
            client=gpu_queue["batch"],
            poll_seconds=0.05,
            timeout_seconds=1,
        )
    with pytest.raises(BatchJobNotFound):
        wait_for_job("", client=gpu_queue["batch"])


def test_submit_refuses_credentials_in_plain_env(gpu_queue):
    with pytest.raises(ValueError, match="secrets"):
        submit_training_job(
            job_name="leaky",
            job_queue=gpu_queue["queue"],
            job_definition=gpu_queue["job_definition"],
            command=["trainkite", "train"],
            environment={"BUILDKITE_API_TOKEN": "bkua_plaintext"},
            client=gpu_queue["batch"],
        )
    with pytest.raises(ValueError, match="job name"):
        submit_training_job(
            job_name="bad name!",
            job_queue=gpu_queue["queue"],
            job_definition=gpu_queue["job_definition"],
            command=["trainkite"],
            environment={},
            client=gpu_queue["batch"],
        )


# ---------------------------------------------------------------- realistic payloads (Stubber)

JOB_ID = "4f1e6b0a-1b2c-4d5e-8f90-123456789abc"


def _job(status: str, **extra) -> dict:
    return {
        "jobName": "sentiment-44",
        "jobId": JOB_ID,
        "jobQueue": f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/trainkite-gpu",
        "status": status,
        "startedAt": 1,
        "jobDefinition": f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/trainkite-train-gpu:3",
        **extra,
    }


def _stubbed(service: str):
    client = botocore.session.get_session().create_client(
        service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )
    return client, Stubber(client)


def test_polls_until_failed_and_reports_last_attempt():
    batch, stub = _stubbed("batch")
    logs, logs_stub = _stubbed("logs")
    spot_reclaim = {
        "container": {"exitCode": 137, "logStreamName": "batch/default/attempt1"},
        "startedAt": 1,
        "stoppedAt": 2,
        "statusReason": "Host EC2 (instance i-0123456789abcdef0) terminated.",
    }
    crash = {
        "container": {"exitCode": 1, "logStreamName": "batch/default/attempt2", "reason": "OutOfMemoryError"},
        "startedAt": 3,
        "stoppedAt": 4,
        "statusReason": "Essential container in task exited",
    }
    for status in ("SUBMITTED", "RUNNABLE", "STARTING", "RUNNING"):
        stub.add_response("describe_jobs", {"jobs": [_job(status)]}, {"jobs": [JOB_ID]})
    stub.add_response(
        "describe_jobs",
        {
            "jobs": [
                _job(
                    "FAILED",
                    statusReason="Essential container in task exited",
                    attempts=[spot_reclaim, crash],
                    container={
                        "exitCode": 1,
                        "logStreamName": "batch/default/attempt2",
                        "logConfiguration": {
                            "logDriver": "awslogs",
                            "options": {"awslogs-group": "/trainkite/training"},
                        },
                    },
                )
            ]
        },
        {"jobs": [JOB_ID]},
    )
    logs_stub.add_response(
        "get_log_events",
        {
            "events": [
                {"timestamp": 1, "message": "epoch 3/5"},
                {"timestamp": 2, "message": "CUDA out of memory\n"},
            ]
        },
        {
            "logGroupName": "/trainkite/training",
            "logStreamName": "batch/default/attempt2",
            "limit": 50,
            "startFromHead": False,
        },
    )
    sleeps: list[float] = []
    with stub, logs_stub:
        result = wait_for_job(
            JOB_ID, client=batch, logs_client=logs, poll_seconds=7, timeout_seconds=3600, sleep=sleeps.append
        )
    assert sleeps == [7, 7, 7, 7]
    assert result == BatchJobResult(
        job_id=JOB_ID,
        status="FAILED",
        status_reason="Essential container in task exited",
        attempts=2,
        log_stream_name="batch/default/attempt2",
        exit_code=1,
        job_name="sentiment-44",
        log_group="/trainkite/training",
        log_tail=("epoch 3/5", "CUDA out of memory"),
    )
    with pytest.raises(BatchJobFailed) as info:
        result.raise_for_status()
    message = str(info.value)
    assert "Essential container in task exited" in message and "exit code 1" in message
    assert "/trainkite/training / batch/default/attempt2" in message and "CUDA out of memory" in message


def test_wait_is_bounded():
    batch, stub = _stubbed("batch")
    for _ in range(4):  # timeout 3 s / poll 1 s -> at most 4 describe calls
        stub.add_response("describe_jobs", {"jobs": [_job("RUNNABLE")]}, {"jobs": [JOB_ID]})
    with stub, pytest.raises(BatchJobTimeout, match="still RUNNABLE"):
        wait_for_job(JOB_ID, client=batch, poll_seconds=1, timeout_seconds=3, sleep=lambda _s: None)
    stub.assert_no_pending_responses()


def test_an_abandoned_wait_terminates_the_job():
    """The flow's wait timed out: the job is terminated, with why, before the timeout is raised."""
    batch, stub = _stubbed("batch")
    stub.add_response("describe_jobs", {"jobs": [_job("RUNNING")]}, {"jobs": [JOB_ID]})
    stub.add_response("describe_jobs", {"jobs": [_job("RUNNING")]}, {"jobs": [JOB_ID]})
    why = (
        "trainkite: the run waiting for this job stopped "
        f"(BatchJobTimeout: AWS Batch job {JOB_ID} still RUNNING after 1s)"
    )
    stub.add_response("terminate_job", {}, {"jobId": JOB_ID, "reason": why})
    with stub, pytest.raises(BatchJobTimeout, match="still RUNNING"):
        wait_for_job(
            JOB_ID, client=batch, poll_seconds=1, timeout_seconds=1, sleep=lambda _s: None, terminate_if_abandoned=True
        )
    stub.assert_no_pending_responses()


def test_a_cancelled_wait_terminates_the_job_and_keeps_the_cancel():
    """A cancelled flow run's SIGTERM arrives as an exception in the wait's sleep: the job is terminated and the
    exception goes on (here KeyboardInterrupt stands for Prefect's TerminationSignal, a BaseException too)."""
    batch, stub = _stubbed("batch")
    stub.add_response("describe_jobs", {"jobs": [_job("RUNNING")]}, {"jobs": [JOB_ID]})
    stub.add_response("terminate_job", {}, {"jobId": JOB_ID, "reason": ANY})

    def cancelled(_s):
        raise KeyboardInterrupt

    with stub, pytest.raises(KeyboardInterrupt):
        wait_for_job(
            JOB_ID, client=batch, poll_seconds=1, timeout_seconds=60, sleep=cancelled, terminate_if_abandoned=True
        )
    stub.assert_no_pending_responses()


def test_a_failed_terminate_does_not_hide_why_the_wait_ended():
    batch, stub = _stubbed("batch")
    stub.add_response("describe_jobs", {"jobs": [_job("RUNNING")]}, {"jobs": [JOB_ID]})
    stub.add_client_error("terminate_job", service_error_code="ClientException", http_status_code=400)
    with stub, pytest.raises(BatchJobTimeout):
        wait_for_job(
            JOB_ID, client=batch, poll_seconds=1, timeout_seconds=0, sleep=lambda _s: None, terminate_if_abandoned=True
        )


def test_a_plain_wait_leaves_the_job_alone():
    batch, stub = _stubbed("batch")
    stub.add_response("describe_jobs", {"jobs": [_job("RUNNING")]}, {"jobs": [JOB_ID]})
    with stub, pytest.raises(BatchJobTimeout):  # a terminate_job call would fail the stub
        wait_for_job(JOB_ID, client=batch, poll_seconds=1, timeout_seconds=0, sleep=lambda _s: None)
    stub.assert_no_pending_responses()


def test_client_exception_on_describe_is_not_found():
    batch, stub = _stubbed("batch")
    stub.add_client_error(
        "describe_jobs",
        service_error_code="ClientException",
        service_message="bad job id",
        http_status_code=400,
    )
    with stub, pytest.raises(BatchJobNotFound, match="bad job id"):
        wait_for_job("not-a-job", client=batch, sleep=lambda _s: None)
