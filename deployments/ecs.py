"""Base job template for the ``ecs`` work pool that runs flow runs on GPUs.

prefect-aws's default ECS template has no GPU support (PrefectHQ/prefect#18476). This
module starts from ``ECSWorker.get_default_base_job_template()`` and adds:

* a **string** ``gpu_count`` variable rendered into the container's
  ``resourceRequirements: [{"type": "GPU", "value": "{{ gpu_count }}"}]``. A whole-value
  placeholder keeps the variable's JSON type, and the ECS API only accepts a *string*
  there; an integer variable renders ``1`` and RegisterTaskDefinition rejects it;
* ``requiresCompatibilities: ["EC2"]`` and ``networkMode: "bridge"`` (Fargate has no GPUs;
  bridge needs no subnets/ENIs, and the launch template's IMDS hop limit of 1 keeps bridge
  containers away from the instance role);
* no ``launchType``: the default ``capacity_provider_strategy`` targets the stack's GPU
  capacity provider (``<project>-gpu``), so the Auto Scaling group scales up from 0.
  Sending ``launchType=EC2`` to an empty cluster fails with "No Container Instances";
* CPU/memory defaults sized for a g5.xlarge (4 vCPU / 16 GiB: 3584 CPU units, 14 GiB,
  leaving room for the ECS agent), a 2 GiB ``/dev/shm`` for DataLoader workers,
  ``match_latest_revision_in_family`` (no task definition revision per run) and CloudWatch
  logs in the stack's log group (``awslogs-create-group`` off: the log group exists and
  the roles may not create groups);
* ``TRAINKITE_DOCKER_IMAGE`` in the container's environment, the ``image`` variable, so every model's
  lineage names the image it was trained in;
* a ``secrets`` variable (``[{"name": "WANDB_API_KEY", "valueFrom": "<secret ARN>"}]``)
  so API keys reach the container as ECS secrets, by ARN, never as plain env values.

Crash detection needs the observer queue
-----------------------------------------
The prefect-aws ECS worker (0.7.x) is fire-and-forget: it calls RunTask, reports the run
as started and stops watching the task. What happens next reaches Prefect only through
the *ECS observer* inside the worker, which reads "ECS Task State Change" events from the
SQS queue named by ``PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_SQS_QUEUE_NAME`` (default
``prefect-ecs-tasks-events``). ``infra/cloudformation/trainkite.yaml`` creates that queue
(+ DLQ and queue policy), the EventBridge rule feeding it, and sets the variable on the
worker service. Without the queue the worker only logs a warning, and a GPU task that is
never placed (``TaskFailedToStart ... RESOURCE:GPU`` after the capacity provider gave up)
or is OOM-killed leaves its flow run Pending/Running forever (PrefectHQ/prefect#22410).

Apply it to a pool (values from the stack outputs)::

    python -m deployments.ecs --cluster trainkite \\
        --execution-role-arn <TrainingExecutionRoleArn> --task-role-arn <TrainingTaskRoleArn> \\
        --capacity-provider <GpuCapacityProviderName> --log-group <TrainingLogGroupName>
    prefect work-pool create trainkite-gpu-ecs --type ecs \\
        --base-job-template deployments/ecs_gpu_template.json   # or: work-pool update
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE_PATH = Path(__file__).with_name("ecs_gpu_template.json")

# g5.xlarge: 4 vCPU (4096 units), 16 GiB. Leave ~0.5 vCPU and ~2 GiB for the ECS agent,
# Docker and the OS, otherwise the task never fits and waits in PROVISIONING.
G5_XLARGE_CPU = 3584
G5_XLARGE_MEMORY_MIB = 14 * 1024

DEFAULT_CAPACITY_PROVIDER = "trainkite-gpu"
DEFAULT_LOG_GROUP = "/trainkite/training"


def _default_template() -> dict[str, Any]:
    from prefect_aws.workers.ecs_worker import ECSWorker

    return copy.deepcopy(ECSWorker.get_default_base_job_template())


def gpu_base_job_template(
    gpu_count_default: str = "1",
    cpu: int = G5_XLARGE_CPU,
    memory: int = G5_XLARGE_MEMORY_MIB,
    *,
    capacity_provider: str = DEFAULT_CAPACITY_PROVIDER,
    cluster: str | None = None,
    task_role_arn: str | None = None,
    execution_role_arn: str | None = None,
    log_group: str = DEFAULT_LOG_GROUP,
    image: str | None = None,
    shared_memory_mib: int = 2048,
) -> dict[str, Any]:
    """Return an ECS work-pool base job template that runs each flow run on GPUs.

    ``gpu_count_default`` must be a string of a positive integer ("1", "4"): the value is
    sent verbatim as ``resourceRequirements[].value``, which the ECS API types as string.
    The keyword arguments only set variable *defaults*; every one stays overridable per
    deployment (``job_variables``) or per run.
    """
    if not isinstance(gpu_count_default, str) or not gpu_count_default.isdigit() or int(gpu_count_default) < 1:
        raise ValueError(f"gpu_count_default must be a string like '1', got {gpu_count_default!r}")
    if int(cpu) <= 0 or int(memory) <= 0:
        raise ValueError("cpu and memory must be positive")

    template = _default_template()
    config = template["job_configuration"]
    props = template["variables"]["properties"]

    # --- task definition: EC2 + GPU --------------------------------------------------
    task_definition = config["task_definition"]
    task_definition["requiresCompatibilities"] = ["EC2"]
    task_definition["networkMode"] = "bridge"
    container = task_definition["containerDefinitions"][0]
    container["resourceRequirements"] = [{"type": "GPU", "value": "{{ gpu_count }}"}]
    container["secrets"] = "{{ secrets }}"
    container["linuxParameters"] = {"sharedMemorySize": "{{ shared_memory_mib }}"}
    # The image a model was trained in goes into its lineage (trainkite.lineage), as the Batch job definition does.
    container["environment"] = [{"name": "TRAINKITE_DOCKER_IMAGE", "value": "{{ image }}"}]

    # --- run request: capacity provider strategy, never a launch type -----------------
    config["task_run_request"].pop("launchType", None)
    props.pop("launch_type", None)

    # --- variables -------------------------------------------------------------------
    props["gpu_count"] = {
        "title": "GPU count",
        "description": (
            "GPUs per flow run, as a STRING ('1'): it is sent verbatim as the ECS "
            "resourceRequirements value, which the ECS API types as a string."
        ),
        "type": "string",
        "pattern": "^[1-9][0-9]*$",
        "default": gpu_count_default,
    }
    props["secrets"] = {
        "title": "Container secrets",
        "description": (
            "ECS container secrets: [{'name': 'WANDB_API_KEY', 'valueFrom': '<Secrets Manager ARN>'}]. "
            "The execution role must be allowed to read them."
        ),
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "valueFrom": {"type": "string"}},
            "required": ["name", "valueFrom"],
        },
        "default": [],
    }
    props["shared_memory_mib"] = {
        "title": "Shared memory (MiB)",
        "description": "Size of /dev/shm; PyTorch DataLoader workers exchange batches through it.",
        "type": "integer",
        "default": int(shared_memory_mib),
    }
    props["cpu"]["default"] = int(cpu)
    props["memory"]["default"] = int(memory)
    props["capacity_provider_strategy"]["default"] = [{"capacityProvider": capacity_provider, "weight": 1, "base": 0}]
    props["match_latest_revision_in_family"]["default"] = True
    props["configure_cloudwatch_logs"]["default"] = True
    props["cloudwatch_logs_options"]["default"] = {
        "awslogs-group": log_group,
        "awslogs-create-group": "false",
    }
    for name, value in (
        ("cluster", cluster),
        ("task_role_arn", task_role_arn),
        ("execution_role_arn", execution_role_arn),
        ("image", image),
    ):
        if value:
            props[name]["default"] = value
    return template


def write_template(path: str | Path = DEFAULT_TEMPLATE_PATH, **kwargs: Any) -> Path:
    """Render :func:`gpu_base_job_template` (kwargs passed through) to ``path`` as JSON."""
    path = Path(path)
    path.write_text(json.dumps(gpu_base_job_template(**kwargs), indent=2, sort_keys=True) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.ecs",
        description="Write the GPU ECS work-pool base job template (JSON).",
    )
    parser.add_argument("-o", "--output", default=str(DEFAULT_TEMPLATE_PATH))
    parser.add_argument("--gpu-count", default="1")
    parser.add_argument("--cpu", type=int, default=G5_XLARGE_CPU)
    parser.add_argument("--memory", type=int, default=G5_XLARGE_MEMORY_MIB)
    parser.add_argument("--capacity-provider", default=DEFAULT_CAPACITY_PROVIDER)
    parser.add_argument("--cluster", default="trainkite", help="ECS cluster (stack output EcsClusterName)")
    parser.add_argument("--task-role-arn")
    parser.add_argument("--execution-role-arn")
    parser.add_argument("--log-group", default=DEFAULT_LOG_GROUP)
    parser.add_argument("--image")
    args = parser.parse_args(argv)
    out = write_template(
        args.output,
        gpu_count_default=args.gpu_count,
        cpu=args.cpu,
        memory=args.memory,
        capacity_provider=args.capacity_provider,
        cluster=args.cluster,
        task_role_arn=args.task_role_arn,
        execution_role_arn=args.execution_role_arn,
        log_group=args.log_group,
        image=args.image,
    )
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
