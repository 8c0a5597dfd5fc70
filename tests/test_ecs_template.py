"""The GPU ECS base job template, rendered by prefect-aws's own worker code and checked
against botocore's ECS request model (offline: no AWS, no Prefect API calls)."""

from __future__ import annotations

import asyncio
import json
import types
import uuid

import botocore.session
import pytest
from botocore.validate import ParamValidator

from deployments.ecs import (
    DEFAULT_TEMPLATE_PATH,
    G5_XLARGE_CPU,
    G5_XLARGE_MEMORY_MIB,
    gpu_base_job_template,
    main,
    write_template,
)

ACCOUNT = "123456789012"
REGION = "us-east-1"
TASK_DEFINITION_ARN = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/prefect_trainkite-gpu:7"
WANDB_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:trainkite/wandb-api-key-AbCdEf"
PREFECT_SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:trainkite/prefect-api-auth-AbCdEf"

VALUES = {
    "image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/trainkite/train:0123abc",
    "cluster": "trainkite",
    "capacity_provider_strategy": [{"capacityProvider": "trainkite-gpu", "weight": 1, "base": 0}],
    "gpu_count": "1",
    "execution_role_arn": f"arn:aws:iam::{ACCOUNT}:role/trainkite-TrainingExecutionRole",
    "task_role_arn": f"arn:aws:iam::{ACCOUNT}:role/trainkite-TrainingTaskRole",
    "secrets": [{"name": "WANDB_API_KEY", "valueFrom": WANDB_SECRET}],
    "prefect_api_key_secret_arn": PREFECT_SECRET,
}


@pytest.fixture(scope="module")
def ecs_model():
    return botocore.session.get_session().get_service_model("ecs")


def _validate(params: dict, model, operation: str):
    return ParamValidator().validate(params, model.operation_model(operation).input_shape)


def _render(template: dict, values: dict) -> tuple[dict, dict]:
    """Run the worker's own path: template + job variables -> RegisterTaskDefinition / RunTask."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_KEY, temporary_settings
    from prefect_aws.workers.ecs_worker import ECSJobConfiguration, ECSWorker

    # A stand-in client: nothing in this template references blocks or Prefect variables,
    # so no API call is made (without it, Prefect would open a client to the API).
    configuration = asyncio.run(
        ECSJobConfiguration.from_template_and_values(template, values, client=types.SimpleNamespace())
    )
    flow_run = FlowRun(flow_id=uuid.uuid4(), deployment_id=uuid.uuid4(), name="gentle-gpu")
    # The worker copies its own PREFECT_* settings into the flow run's env. With a secret
    # ARN configured the key must reach the container as an ECS secret instead (and
    # prefect-aws 0.7.12 expects the worker to have PREFECT_API_KEY set in that case).
    with temporary_settings(updates={PREFECT_API_KEY: "pnu_not_a_real_key"}):
        configuration.prepare_for_flow_run(flow_run)
    worker = ECSWorker(work_pool_name="trainkite-gpu-ecs")
    task_definition = worker._prepare_task_definition(configuration, region=REGION, flow_run=flow_run)
    run_request = worker._prepare_task_run_request(
        configuration, task_definition, TASK_DEFINITION_ARN, new_task_definition_registered=True
    )
    return task_definition, run_request


def test_template_shape():
    template = gpu_base_job_template()
    props = template["variables"]["properties"]
    config = template["job_configuration"]

    assert props["gpu_count"]["type"] == "string" and props["gpu_count"]["default"] == "1"
    container = config["task_definition"]["containerDefinitions"][0]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "{{ gpu_count }}"}]
    assert config["task_definition"]["requiresCompatibilities"] == ["EC2"]
    assert config["task_definition"]["networkMode"] in {"bridge", "awsvpc"}
    # capacity provider strategy, never a launch type
    assert "launchType" not in config["task_run_request"]
    assert "launch_type" not in props
    assert props["capacity_provider_strategy"]["default"] == [
        {"capacityProvider": "trainkite-gpu", "weight": 1, "base": 0}
    ]
    assert (props["cpu"]["default"], props["memory"]["default"]) == (G5_XLARGE_CPU, G5_XLARGE_MEMORY_MIB)
    assert G5_XLARGE_CPU <= 4096 and G5_XLARGE_MEMORY_MIB < 16 * 1024  # fits a g5.xlarge
    assert props["match_latest_revision_in_family"]["default"] is True
    assert props["configure_cloudwatch_logs"]["default"] is True
    assert props["cloudwatch_logs_options"]["default"]["awslogs-create-group"] == "false"
    assert {"task_role_arn", "execution_role_arn", "secrets"} <= props.keys()


def test_prefect_server_accepts_template_and_rejects_integer_gpu_count():
    """The same checks the Prefect API runs on work-pool create and on deployment job variables."""
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.schema_tools.validation import ValidationError, is_valid_schema, validate

    template = gpu_base_job_template()
    validate_base_job_template(template)  # every placeholder is a declared variable
    schema = template["variables"]
    is_valid_schema(schema, preprocess=False)

    def check(job_variables: dict) -> None:
        validate(
            job_variables,
            schema,
            raise_on_error=True,
            preprocess=True,
            ignore_required=True,
            allow_none_with_default=True,
        )

    check({"gpu_count": "4", "image": VALUES["image"], "secrets": VALUES["secrets"]})
    with pytest.raises(ValidationError, match="gpu_count"):
        check({"gpu_count": 1})
    with pytest.raises(ValidationError, match="gpu_count"):
        check({"gpu_count": "0"})


def test_rendered_requests_are_valid_ecs_calls(ecs_model):
    task_definition, run_request = _render(gpu_base_job_template(), VALUES)

    report = _validate(task_definition, ecs_model, "RegisterTaskDefinition")
    assert not report.has_errors(), report.generate_report()
    report = _validate(run_request, ecs_model, "RunTask")
    assert not report.has_errors(), report.generate_report()

    container = task_definition["containerDefinitions"][0]
    assert container["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert isinstance(container["resourceRequirements"][0]["value"], str)
    assert task_definition["requiresCompatibilities"] == ["EC2"]
    assert task_definition["executionRoleArn"] == VALUES["execution_role_arn"]
    assert container["image"] == VALUES["image"]
    assert container["environment"] == [{"name": "TRAINKITE_DOCKER_IMAGE", "value": VALUES["image"]}]
    # non-Fargate: the worker also puts cpu/memory on the container
    assert (container["cpu"], container["memory"]) == (G5_XLARGE_CPU, G5_XLARGE_MEMORY_MIB)
    assert container["linuxParameters"]["sharedMemorySize"] == 2048
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/trainkite/training"
    # secrets by ARN; the Prefect API key too, and it is not in the plain environment
    secrets = {s["name"]: s["valueFrom"] for s in container["secrets"]}
    assert secrets == {"WANDB_API_KEY": WANDB_SECRET, "PREFECT_API_KEY": PREFECT_SECRET}

    assert "launchType" not in run_request
    assert run_request["capacityProviderStrategy"] == VALUES["capacity_provider_strategy"]
    assert run_request["cluster"] == "trainkite"
    assert run_request["overrides"]["taskRoleArn"] == VALUES["task_role_arn"]
    env = {e["name"] for o in run_request["overrides"]["containerOverrides"] for e in o.get("environment", [])}
    assert "PREFECT_API_KEY" not in env
    assert "PREFECT__FLOW_RUN_ID" in env
    tags = {t["key"] for t in run_request["tags"]}
    assert "prefect.io/flow-run-id" in tags  # what the ECS observer matches task events on


def test_without_secret_arn_the_worker_key_would_be_plain_env():
    """Why the pool must set prefect_api_key_secret_arn: otherwise the worker's key is copied as env."""
    values = {k: v for k, v in VALUES.items() if k != "prefect_api_key_secret_arn"}
    task_definition, run_request = _render(gpu_base_job_template(), values)  # worker has PREFECT_API_KEY set
    env = {e["name"] for o in run_request["overrides"]["containerOverrides"] for e in o.get("environment", [])}
    assert "PREFECT_API_KEY" in env
    assert {s["name"] for s in task_definition["containerDefinitions"][0]["secrets"]} == {"WANDB_API_KEY"}


def test_multi_gpu_override(ecs_model):
    task_definition, _ = _render(gpu_base_job_template(), {**VALUES, "gpu_count": "4"})
    assert task_definition["containerDefinitions"][0]["resourceRequirements"] == [{"type": "GPU", "value": "4"}]
    assert not _validate(task_definition, ecs_model, "RegisterTaskDefinition").has_errors()


def test_integer_gpu_count_fails_ecs_validation(ecs_model):
    """Why gpu_count is a string: a whole-value placeholder keeps the JSON type."""
    task_definition, _ = _render(gpu_base_job_template(), {**VALUES, "gpu_count": 1})
    assert task_definition["containerDefinitions"][0]["resourceRequirements"][0]["value"] == 1
    report = _validate(task_definition, ecs_model, "RegisterTaskDefinition")
    assert report.has_errors()
    assert "resourceRequirements[0].value" in report.generate_report()


def test_gpu_count_default_must_be_a_string_number():
    for bad in (1, "one", "0", ""):
        with pytest.raises(ValueError):
            gpu_base_job_template(gpu_count_default=bad)


def test_shipped_json_is_current(tmp_path):
    """deployments/ecs_gpu_template.json == `python -m deployments.ecs` (regenerate after upgrading prefect-aws)."""
    shipped = json.loads(DEFAULT_TEMPLATE_PATH.read_text())
    assert shipped == gpu_base_job_template(cluster="trainkite"), "run: python -m deployments.ecs"

    out = tmp_path / "pool.json"
    assert main(["-o", str(out), "--gpu-count", "2", "--execution-role-arn", VALUES["execution_role_arn"]]) == 0
    written = json.loads(out.read_text())
    assert written["variables"]["properties"]["gpu_count"]["default"] == "2"
    assert written["variables"]["properties"]["execution_role_arn"]["default"] == VALUES["execution_role_arn"]
    assert write_template(tmp_path / "x.json").exists()
