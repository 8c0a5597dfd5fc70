"""Make the Prefect server (PREFECT_API_URL) match deployments/specs.py and the release automations.

Idempotent: each object is read first and written only when it differs, so a second apply
changes nothing (no new `updated` timestamps, no new automation IDs). Work pools are created
when missing and otherwise left alone: an operator may have filled the ECS template with the
stack's values (`python -m deployments.ecs ...`), and apply must not undo that.

    trainkite deployments apply      # or: python -m deployments.apply
    trainkite deployments show       # what apply would change, without changing it
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from deployments.specs import (
    DEPLOYMENTS,
    POOLS,
    RELEASE_DEPLOYMENT,
    RETIRED_DEPLOYMENTS,
    SCHEDULE_SLUG,
    DeploymentSpec,
    PoolSpec,
    form_schema,
)
from trainkite.errors import TrainkiteError

log = logging.getLogger("trainkite.deployments")

# The deployment fields apply owns; anything else (paused, schedules made in the UI) stays as is.
MANAGED_FIELDS = (
    "description",
    "entrypoint",
    "path",
    "pull_steps",
    "work_pool_name",
    "job_variables",
    "parameter_openapi_schema",
    "tags",
    "concurrency_limit",
    "enforce_parameter_schema",
)


class ApplyError(TrainkiteError):
    pass


def apply(
    *,
    dry_run: bool = False,
    specs: Iterable[DeploymentSpec] = DEPLOYMENTS,
    pools: Iterable[PoolSpec] = POOLS,
    local_containers: bool = False,
) -> dict[str, Any]:
    """Apply (or with dry_run, only compare) pools, deployments and automations; returns a report.

    `local_containers` adds the local container pool and its deployments (specs.LOCAL_CONTAINER_POOLS)."""
    if local_containers:
        from deployments.specs import LOCAL_CONTAINER_POOLS, local_container_deployments

        specs, pools = [*specs, *local_container_deployments()], [*pools, *LOCAL_CONTAINER_POOLS]
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    report: dict[str, Any] = {
        "api_url": PREFECT_API_URL.value(),
        "dry_run": dry_run,
        "pools": [],
        "deployments": [],
        "automations": [],
    }
    with get_client(sync_client=True) as client:
        available = set()
        for pool in pools:
            entry = _apply_pool(client, pool, dry_run)
            report["pools"].append(entry)
            if entry["status"] != "skipped":
                available.add(pool.name)
        release_id = None
        for spec in specs:
            entry = _apply_deployment(client, spec, available, dry_run)
            report["deployments"].append(entry)
            if spec.full_name == RELEASE_DEPLOYMENT:
                release_id = entry.get("id")
        for name in RETIRED_DEPLOYMENTS:
            entry = _retire_deployment(client, name, dry_run)
            if entry:
                report["deployments"].append(entry)
        from deployments.automations import desired_automations

        if release_id is None:
            log.warning("no %s deployment: the release-build automation is skipped", RELEASE_DEPLOYMENT)
        for automation in desired_automations(UUID(release_id) if release_id else None):
            report["automations"].append(_apply_automation(client, automation, dry_run))
    report["changed"] = any(
        e["status"] in ("created", "updated", "deleted", "would create", "would update", "would delete")
        for section in ("pools", "deployments", "automations")
        for e in report[section]
    )
    return report


# ---------------------------------------------------------------- pools


def _base_job_template(pool: PoolSpec) -> dict[str, Any]:
    if pool.template == "process":
        from prefect.workers.process import ProcessWorker

        return ProcessWorker.get_default_base_job_template()
    if pool.template == "docker":
        from prefect_docker.worker import DockerWorker

        return DockerWorker.get_default_base_job_template()
    if pool.template == "ecs_gpu":
        from deployments.ecs import gpu_base_job_template

        return gpu_base_job_template()
    raise ApplyError(f"pool {pool.name}: unknown template kind {pool.template!r}")


def _apply_pool(client, pool: PoolSpec, dry_run: bool) -> dict[str, Any]:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    entry = {"name": pool.name, "type": pool.type}
    if pool.optional_module and importlib.util.find_spec(pool.optional_module) is None:
        log.info("work pool %s skipped: %s is not installed", pool.name, pool.optional_module)
        return {**entry, "status": "skipped", "detail": f"{pool.optional_module} not installed"}
    try:
        found = client.read_work_pool(pool.name)
    except ObjectNotFound:
        found = None
    if found is not None:
        if found.type != pool.type:
            raise ApplyError(
                f"work pool {pool.name!r} exists with type {found.type!r}, not {pool.type!r}; "
                "delete it (`prefect work-pool delete`) or rename it"
            )
        return {**entry, "status": "unchanged", "detail": "exists; its base job template is left as is"}
    if dry_run:
        return {**entry, "status": "would create"}
    client.create_work_pool(
        WorkPoolCreate(
            name=pool.name, type=pool.type, description=pool.description, base_job_template=_base_job_template(pool)
        ),
        overwrite=False,
    )
    log.info("created work pool %s (%s)", pool.name, pool.type)
    return {**entry, "status": "created"}


# ----------------------------------------------------------- deployments


def load_flow(spec: DeploymentSpec):
    module = importlib.import_module(spec.module)
    flow = getattr(module, spec.attribute, None)
    if flow is None or not hasattr(flow, "parameters"):
        raise ApplyError(
            f"{spec.entrypoint} has no flow {spec.attribute!r}; fix the entry for "
            f"{spec.full_name} in deployments/specs.py"
        )
    if flow.name != spec.flow_name:
        raise ApplyError(
            f"{spec.entrypoint} is flow {flow.name!r}, but deployments/specs.py calls it "
            f"{spec.flow_name!r}; make them agree"
        )
    return flow


def desired_fields(spec: DeploymentSpec, flow) -> dict[str, Any]:
    return {
        "description": spec.description,
        "entrypoint": spec.entrypoint,
        "path": spec.path,
        # The worker's flow-run process changes into the code folder, then imports the entrypoint.
        "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": spec.path}}],
        "work_pool_name": spec.pool,
        "job_variables": spec.job_variables,
        "parameter_openapi_schema": form_schema(flow.parameters.model_dump_for_openapi(), spec.form_hidden),
        "tags": sorted(spec.tags),
        "concurrency_limit": spec.concurrency_limit,
        "enforce_parameter_schema": True,
    }


def current_fields(deployment) -> dict[str, Any]:
    limit = deployment.global_concurrency_limit
    return {
        "description": deployment.description,
        "entrypoint": deployment.entrypoint,
        "path": deployment.path,
        "pull_steps": deployment.pull_steps,
        "work_pool_name": deployment.work_pool_name,
        "job_variables": deployment.job_variables,
        "parameter_openapi_schema": deployment.parameter_openapi_schema,
        "tags": sorted(deployment.tags),
        "concurrency_limit": limit.limit if limit is not None else None,
        "enforce_parameter_schema": deployment.enforce_parameter_schema,
    }


def _retire_deployment(client, full_name: str, dry_run: bool) -> dict[str, Any] | None:
    """A deployment under a name this project no longer applies is deleted (its flow runs stay)."""
    from prefect.exceptions import ObjectNotFound

    try:
        found = client.read_deployment_by_name(full_name)
    except ObjectNotFound:
        return None
    entry = {"name": full_name, "pool": found.work_pool_name, "entrypoint": found.entrypoint, "detail": "retired name"}
    if dry_run:
        return {**entry, "status": "would delete"}
    client.delete_deployment(found.id)
    log.info("deleted deployment %s (a retired name)", full_name)
    return {**entry, "status": "deleted"}


def _apply_deployment(client, spec: DeploymentSpec, pools: set[str], dry_run: bool) -> dict[str, Any]:
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.exceptions import ObjectNotFound

    entry: dict[str, Any] = {"name": spec.full_name, "pool": spec.pool, "entrypoint": spec.entrypoint}
    if spec.pool not in pools:
        log.info("deployment %s skipped: its work pool %s is skipped", spec.full_name, spec.pool)
        return {**entry, "status": "skipped", "detail": f"work pool {spec.pool} skipped"}
    want = desired_fields(spec, load_flow(spec))
    try:
        found = client.read_deployment_by_name(spec.full_name)
    except ObjectNotFound:
        found = None
    if found is None:
        if dry_run:
            return {**entry, "status": "would create"}
        flow_id = client.create_flow_from_name(spec.flow_name)
        deployment_id = client.create_deployment(flow_id=flow_id, name=spec.name, **want)
        _apply_schedule(client, deployment_id, spec, dry_run=False)
        log.info("created deployment %s", spec.full_name)
        return {**entry, "id": str(deployment_id), "status": "created"}
    have = current_fields(found)
    changed = sorted(k for k in MANAGED_FIELDS if have[k] != want[k])
    if _apply_schedule(client, found.id, spec, dry_run):
        changed.append("schedule")
    entry["id"] = str(found.id)
    if not changed:
        return {**entry, "status": "unchanged"}
    if dry_run:
        return {**entry, "status": "would update", "changed": changed}
    fields = [k for k in changed if k != "schedule"]
    if fields:
        client.update_deployment(found.id, DeploymentUpdate(**{k: want[k] for k in fields}))
    log.info("updated deployment %s: %s", spec.full_name, ", ".join(changed))
    return {**entry, "status": "updated", "changed": changed}


def _apply_schedule(client, deployment_id, spec: DeploymentSpec, dry_run: bool) -> bool:
    """Make the schedule apply owns match `spec.cron`; True if it had to change."""
    if spec.cron is None:
        return False
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    want = CronSchedule(cron=spec.cron, timezone=spec.timezone)
    ours = [s for s in client.read_deployment_schedules(deployment_id) if s.slug == SCHEDULE_SLUG]
    if ours and getattr(ours[0].schedule, "cron", None) == want.cron and ours[0].schedule.timezone == want.timezone:
        return False
    if dry_run:
        return True
    if ours:
        client.update_deployment_schedule(deployment_id, ours[0].id, schedule=want, active=True)
    else:
        client.create_deployment_schedules(
            deployment_id, [DeploymentScheduleCreate(schedule=want, active=True, slug=SCHEDULE_SLUG)]
        )
    return True


# ----------------------------------------------------------- automations


def _normalized(value: Any) -> Any:
    # Sets (expect, for_each) come back from the API as lists in any order.
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_normalized(v) for v in value]
        return sorted(items, key=repr) if all(isinstance(v, str) for v in items) else items
    return value


def _comparable(automation) -> dict[str, Any]:
    from prefect.automations import AutomationCore

    core = AutomationCore.model_validate(automation.model_dump())
    return _normalized(core.model_dump(mode="json", exclude={"owner_resource", "tags"}))


def _apply_automation(client, want, dry_run: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": want.name}
    found = client.read_automations_by_name(want.name)
    if not found:
        if dry_run:
            return {**entry, "status": "would create"}
        automation_id = client.create_automation(want)
        log.info("created automation %s", want.name)
        return {**entry, "id": str(automation_id), "status": "created"}
    keep, *duplicates = sorted(found, key=lambda a: str(a.id))
    entry["id"] = str(keep.id)
    if duplicates and not dry_run:
        # Two applies racing each other can both create one; keep a single automation per name.
        for extra in duplicates:
            client.delete_automation(extra.id)
        log.warning("deleted %d duplicate automation(s) named %s", len(duplicates), want.name)
    if _comparable(keep) == _comparable(want):
        return {**entry, "status": "updated" if duplicates and not dry_run else "unchanged"}
    if dry_run:
        return {**entry, "status": "would update"}
    client.update_automation(keep.id, want)
    log.info("updated automation %s", want.name)
    return {**entry, "status": "updated"}


def main() -> int:
    import json

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    print(json.dumps(apply(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
