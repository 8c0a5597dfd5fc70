"""The project's Prefect work pools and deployments, as plain data (no Prefect import).

`deployments/apply.py` makes the server match this list; `trainkite deployments show` diffs
against it. Add a deployment here, not in a YAML file or a script: one list, one place.

The UI's typed parameter form comes from each flow's signature (pydantic models such as
`params.model.Params`), so nothing here repeats the parameters.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from trainkite.home import REPO_ROOT

PROCESS_POOL = "trainkite-process"
ECS_POOL = "trainkite-gpu-ecs"
# Where the GPU image keeps the code (infra/docker/Dockerfile.gpu: WORKDIR /opt/app).
IMAGE_APP_DIR = "/opt/app"

# Deployments are named for what they run (the UI lists them, and an automation's action reads "Run
# deployment: <name>"), never for their pool: the pool is a column of its own.
TRAIN_DEPLOYMENT = "train/train-local-cpu"
TRAIN_GPU_DEPLOYMENT = "train/train-ecs-gpu"
BATCH_FLOW = "train-batch"
BATCH_DEPLOYMENT = f"{BATCH_FLOW}/train-aws-batch-gpu"
RELEASE_DEPLOYMENT = "release-build/release-failed-build"
DEPLOY_DEPLOYMENT = "deploy/deploy-model"
RETRAIN_DEPLOYMENT = "retrain/weekly-retrain"
SWEEP_DEPLOYMENT = "sweep/hyperparameter-sweep"
# Names this project used to apply (each named after its pool): `deployments apply` deletes them, so the
# UI does not list every deployment twice after an upgrade.
RETIRED_DEPLOYMENTS = tuple(
    f"{flow}/{pool}"
    for flow, pool in (
        ("train", "trainkite-process"),
        ("train", "trainkite-gpu-ecs"),
        ("release-build", "trainkite-process"),
        ("train-batch", "trainkite-process"),
        ("deploy", "trainkite-process"),
        ("retrain", "trainkite-process"),
        ("sweep", "trainkite-process"),
    )
)
# Flow runs started from Buildkite carry this tag; the release automations match on it.
BUILDKITE_TAG = "buildkite"

# Seconds between flow-run heartbeats (Prefect's minimum is 30). The stale-run automation marks a
# run Crashed after ZOMBIE_AFTER_SECONDS without one; 4 missed beats leaves room for a busy CPU.
HEARTBEAT_SECONDS = 30
# Weekly retrain, Monday 03:00 UTC unless the environment of `deployments apply` says otherwise.
RETRAIN_CRON = os.environ.get("TRAINKITE_RETRAIN_CRON", "0 3 * * 1")
RETRAIN_TIMEZONE = os.environ.get("TRAINKITE_RETRAIN_TIMEZONE", "UTC")
SCHEDULE_SLUG = "trainkite"
ZOMBIE_AFTER_SECONDS = 120
# A Buildkite-started run still not Running after this long (no worker polls its pool, an ECS task that
# is never placed, a GPU capacity provider that never scales out) is marked Crashed, which releases its
# build. 30 min covers a GPU instance launch plus a multi-GB image pull; read when `deployments apply` runs.
START_TIMEOUT_SECONDS = int(os.environ.get("TRAINKITE_START_TIMEOUT_SECONDS", "1800"))

_QUIET_OFFLINE_ENV = {
    "DO_NOT_TRACK": "1",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "trainkite",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
    "PYTHONUNBUFFERED": "1",
    # Our pyproject declares prefect: with this on and uv on PATH, a worker would `uv run` a fresh env.
    "PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES": "false",
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
}


@dataclass(frozen=True)
class PoolSpec:
    name: str
    type: str
    description: str
    # "process", "ecs_gpu" or "docker": which base job template to create the pool with.
    template: str
    # A pool whose worker needs an extra (prefect-docker for local containers) is skipped where it is missing.
    optional_module: str | None = None


@dataclass(frozen=True)
class DeploymentSpec:
    flow_name: str
    name: str
    entrypoint: str  # relative to `path`, like prefect.yaml
    pool: str
    description: str
    path: str = str(REPO_ROOT)
    job_variables: dict[str, Any] = field(default_factory=dict)
    concurrency_limit: int | None = None
    tags: tuple[str, ...] = ()
    # A cron schedule apply owns (slug SCHEDULE_SLUG); schedules added in the UI are left alone.
    cron: str | None = None
    timezone: str = "UTC"
    # Parameters the UI's run form does not show ("build", or "params.deploy" for a section of a model
    # parameter): internal, or not what a run from the form sets. A run that passes them is still accepted.
    form_hidden: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    @property
    def entrypoint_file(self) -> str:
        return self.entrypoint.split(":", 1)[0]

    @property
    def module(self) -> str:
        return self.entrypoint_file.removesuffix(".py").replace("/", ".")

    @property
    def attribute(self) -> str:
        return self.entrypoint.split(":", 1)[1]


POOLS: tuple[PoolSpec, ...] = (
    PoolSpec(
        PROCESS_POOL, "process", "Local subprocesses: laptops, CI, and the release-build runs.", template="process"
    ),
    PoolSpec(ECS_POOL, "ecs", "ECS tasks on the GPU capacity provider (EC2, g5).", template="ecs_gpu"),
)

_LOCAL_ENV = {**_QUIET_OFFLINE_ENV, "WANDB_MODE": "offline"}
# `build` is filled by the launcher from Buildkite's env; deploy.* settings belong to the deploy flow.
TRAIN_FORM_HIDDEN = ("build", "params.deploy")
# Online W&B on AWS: WANDB_API_KEY arrives as an ECS secret (pool variable `secrets`), never here.
_GPU_ENV = {**_QUIET_OFFLINE_ENV, "WANDB_MODE": "online"}

DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "train",
        "train-local-cpu",
        "flows/train.py:train",
        PROCESS_POOL,
        "Train, evaluate and publish one text classifier in a local subprocess (CPU, W&B offline). "
        "Started by `trainkite launch` in Buildkite builds, or from this form.",
        job_variables={"env": _LOCAL_ENV},
        form_hidden=TRAIN_FORM_HIDDEN,
        # Two trainings share one box comfortably (torch threads are pinned by params.train.threads);
        # more would queue rather than thrash.
        concurrency_limit=2,
    ),
    DeploymentSpec(
        "train",
        "train-ecs-gpu",
        "flows/train.py:train",
        ECS_POOL,
        "Train one text classifier on an ECS GPU task (EC2 capacity provider), W&B online.",
        path=IMAGE_APP_DIR,
        job_variables={"env": _GPU_ENV},
        form_hidden=TRAIN_FORM_HIDDEN,
        # Each run holds a GPU instance: bound the bill, queue the rest.
        concurrency_limit=4,
    ),
    DeploymentSpec(
        "release-build",
        "release-failed-build",
        "flows/release.py:release_build",
        PROCESS_POOL,
        "Tell a Buildkite build that its training run failed, crashed or was cancelled: annotate it and "
        "release its `training_finished` step. Started by the `trainkite-release-build` automation.",
        job_variables={"env": {**_QUIET_OFFLINE_ENV, "WANDB_MODE": "disabled"}},
        tags=("trainkite-release",),
    ),
    DeploymentSpec(
        BATCH_FLOW,
        "train-aws-batch-gpu",
        "flows/batch.py:train_on_batch",
        PROCESS_POOL,
        "Train on an AWS Batch GPU queue (Spot first, retried on reclaim and resumed from the checkpoint); "
        "this run only submits the job and waits, so a CPU worker is enough.",
        job_variables={"env": _GPU_ENV},
    ),
    DeploymentSpec(
        "deploy",
        "deploy-model",
        "flows/deploy.py:deploy",
        PROCESS_POOL,
        "Verify a published model and deploy it (local serving or SageMaker).",
        job_variables={"env": _LOCAL_ENV},
    ),
    DeploymentSpec(
        "retrain",
        "weekly-retrain",
        "flows/retrain.py:retrain",
        PROCESS_POOL,
        "Scheduled retrain: skips when the data fingerprint is unchanged unless forced.",
        job_variables={"env": _LOCAL_ENV},
        concurrency_limit=1,
        cron=RETRAIN_CRON,
        timezone=RETRAIN_TIMEZONE,
    ),
    DeploymentSpec(
        "sweep",
        "hyperparameter-sweep",
        "flows/sweep.py:sweep",
        PROCESS_POOL,
        "Hyper-parameter sweep: many train runs, one champion.",
        job_variables={"env": _LOCAL_ENV},
        concurrency_limit=1,
    ),
)


def form_schema(schema: dict[str, Any], hidden: tuple[str, ...]) -> dict[str, Any]:
    """A flow's parameter schema without the `hidden` fields (see DeploymentSpec.form_hidden)."""
    out = _escape_descriptions(json.loads(json.dumps(schema)))
    for path in hidden:
        name, _, section = path.partition(".")
        if not section:
            out["properties"].pop(name, None)
            if name in out.get("required", []):
                out["required"].remove(name)
            continue
        ref = _ref_of(out["properties"][name])
        definition = out["definitions"][ref]
        definition["properties"].pop(section, None)
        if section in definition.get("required", []):
            definition["required"].remove(section)
        # Runs that carry the hidden section (the launcher sends whole params) still pass the server's
        # check; the flow's own model validates it.
        definition["additionalProperties"] = True
    return out


def _escape_descriptions(node: Any) -> Any:
    """The UI renders descriptions as Markdown with HTML: "trainkite-<model name>" showed as "trainkite-".
    Angle brackets outside `code spans` become entities, which render as the brackets themselves."""
    if isinstance(node, dict):
        return {
            k: (_escape_markdown(v) if k == "description" and isinstance(v, str) else _escape_descriptions(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_escape_descriptions(v) for v in node]
    return node


def _escape_markdown(text: str) -> str:
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside code spans
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _ref_of(prop: dict[str, Any]) -> str:
    for candidate in [prop, *prop.get("anyOf", []), *prop.get("allOf", [])]:
        if "$ref" in candidate:
            return candidate["$ref"].rsplit("/", 1)[-1]
    raise KeyError(f"parameter has no model definition: {prop}")


def deployment(full_name: str) -> DeploymentSpec:
    for spec in DEPLOYMENTS:
        if spec.full_name == full_name:
            return spec
    raise KeyError(f"no deployment {full_name!r} in deployments/specs.py")


# ------------------------------------------------ local container compute (`deployments apply --local-containers`)
# The laptop twin of the ECS path: Prefect's docker worker starts each flow run in the train image
# (scripts/build-images.sh train) on the local engine; with podman, its Docker-compatible API socket:
#   podman system service --time=0 unix:///run/podman/podman.sock &
#   DOCKER_HOST=unix:///run/podman/podman.sock prefect worker start --pool trainkite-local-containers
# The container reaches the local Prefect server on the host network and writes to the host's
# TRAINKITE_HOME (artifact store, W&B offline runs), mounted at the same path and written as the host's
# user, so `trainkite models` / `verify` on the host see what it trained. Read when `deployments apply` runs.
LOCAL_CONTAINERS_POOL = "trainkite-local-containers"


def _local_train_image() -> str:
    from trainkite.lineage import git_output

    return os.environ.get("TRAINKITE_TRAIN_IMAGE") or f"trainkite-train:{git_output('rev-parse', 'HEAD') or 'unknown'}"


def _local_container_variables() -> dict[str, Any]:
    from trainkite.home import home as tk_home

    home = str(tk_home().resolve())
    return {
        "image": _local_train_image(),
        "image_pull_policy": "Never",  # built here; no registry to pull from
        "network_mode": "host",
        "volumes": [f"{home}:{home}"],
        "env": {**_LOCAL_ENV, "TRAINKITE_HOME": home, "HOME": home},
        "container_create_kwargs": {"user": f"{os.getuid()}:{os.getgid()}"},
    }


LOCAL_CONTAINER_POOLS: tuple[PoolSpec, ...] = (
    PoolSpec(
        LOCAL_CONTAINERS_POOL,
        "docker",
        "Each flow run in the train image on this machine's container engine "
        "(docker, or podman's Docker-compatible socket): the local twin of the ECS pool.",
        template="docker",
        optional_module="prefect_docker",
    ),
)


def local_container_deployments() -> tuple[DeploymentSpec, ...]:
    return (
        DeploymentSpec(
            "train",
            LOCAL_CONTAINERS_POOL,
            "flows/train.py:train",
            LOCAL_CONTAINERS_POOL,
            "Train one text classifier in the train image on the local container engine (as the ECS pool does "
            "on AWS), W&B offline, artifacts in the host's TRAINKITE_HOME.",
            path=IMAGE_APP_DIR,
            job_variables=_local_container_variables(),
            concurrency_limit=2,
        ),
    )
