"""AWS Batch GPU training jobs: job definition spec, submit, and wait (plain boto3).

No Prefect import here. prefect-aws's ``batch_submit`` only returns a job id and has no
wait, so the flow (or a Prefect task wrapping these functions) calls
:func:`submit_training_job` then :func:`wait_for_job`, and raises
:class:`BatchJobFailed` from a failed :class:`BatchJobResult` (``result.raise_for_status()``).

Clients come from ``boto3.client("batch")`` / ``boto3.client("logs")`` unless passed in,
so ``AWS_ENDPOINT_URL`` (moto in tests), ``AWS_REGION`` and the usual credential chain
apply without code changes.

Spot: the job definition's retry strategy (:data:`RETRY_STRATEGY`, identical to the
CloudFormation job definition) retries an attempt whose host was reclaimed
(status reason ``Host EC2 (instance i-...) terminated.``) and exits on anything else. If
no ``evaluateOnExit`` rule matched, Batch would *retry*, hence the final ``"*"`` -> EXIT
rule. The container sees ``AWS_BATCH_JOB_ATTEMPT`` and resumes from its S3 checkpoints.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)

#: Same rules as ``GpuTrainingJobDefinition.RetryStrategy`` in infra/cloudformation/trainkite.yaml.
RETRY_STRATEGY: dict[str, Any] = {
    "attempts": 3,
    "evaluateOnExit": [
        {"onStatusReason": "Host EC2*", "action": "RETRY"},
        {"onReason": "*", "action": "EXIT"},
    ],
}

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED"})
DEFAULT_LOG_GROUP = "/aws/batch/job"
# Batch job names: up to 128 letters, numbers, hyphens and underscores, starting with a
# letter or number.
_JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
# Names that look like credentials must come through the job definition's `secrets`
# (Secrets Manager ARN), never as a plain environment value in SubmitJob.
_SECRET_NAME_RE = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD|AUTH_STRING)$", re.IGNORECASE)


class BatchJobError(RuntimeError):
    """Base class for Batch job errors raised by this module."""


class BatchJobNotFound(BatchJobError, LookupError):
    """The job id is unknown to AWS Batch (typo, other region/account, or expired)."""


class BatchJobTimeout(BatchJobError, TimeoutError):
    """:func:`wait_for_job` gave up before the job reached SUCCEEDED or FAILED."""

    def __init__(self, job_id: str, last_status: str, timeout_seconds: float):
        self.job_id = job_id
        self.last_status = last_status
        self.timeout_seconds = timeout_seconds
        super().__init__(f"AWS Batch job {job_id} still {last_status} after {timeout_seconds:g}s")


@dataclass(frozen=True)
class BatchJobResult:
    """Terminal state of a Batch job, as reported by ``describe_jobs``."""

    job_id: str
    status: str  # "SUCCEEDED" | "FAILED"
    status_reason: str | None
    attempts: int
    log_stream_name: str | None
    exit_code: int | None
    job_name: str | None = None
    log_group: str = DEFAULT_LOG_GROUP
    #: Last lines of the failed attempt's log (only when a logs client was given).
    log_tail: tuple[str, ...] = field(default_factory=tuple)

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def raise_for_status(self) -> BatchJobResult:
        if not self.succeeded:
            raise BatchJobFailed(self)
        return self


class BatchJobFailed(BatchJobError):
    """A Batch job ended FAILED; carries the reason and where its logs are."""

    def __init__(self, result: BatchJobResult):
        self.result = result
        self.job_id = result.job_id
        self.status_reason = result.status_reason
        self.log_stream_name = result.log_stream_name
        self.exit_code = result.exit_code
        parts = [
            f"AWS Batch job {result.job_id}"
            + (f" ({result.job_name})" if result.job_name else "")
            + f" FAILED after {result.attempts} attempt(s): {result.status_reason or 'no status reason given'}"
        ]
        if result.exit_code is not None:
            parts.append(f"exit code {result.exit_code}")
        if result.log_stream_name:
            parts.append(f"logs: {result.log_group} / {result.log_stream_name}")
        else:
            parts.append("no log stream (the container never started)")
        message = "; ".join(parts)
        if result.log_tail:
            message += "\n--- last log lines ---\n" + "\n".join(result.log_tail)
        super().__init__(message)


def _client(service: str, client: Any | None) -> Any:
    if client is not None:
        return client
    import boto3

    return boto3.client(service)


def job_definition_spec(
    image: str,
    vcpus: int,
    memory_mib: int,
    gpus: int,
    *,
    name: str = "trainkite-train-gpu",
    command: Sequence[str] | None = None,
    job_role_arn: str | None = None,
    execution_role_arn: str | None = None,
    secrets: Mapping[str, str] | None = None,
    environment: Mapping[str, str] | None = None,
    timeout_seconds: int = 6 * 3600,
    retry_attempts: int = RETRY_STRATEGY["attempts"],
    log_group: str | None = None,
    shared_memory_mib: int = 2048,
) -> dict[str, Any]:
    """Keyword arguments for ``batch.register_job_definition`` (EC2, GPU, Spot-aware retries).

    ``secrets`` maps an environment variable name to a Secrets Manager ARN (injected by
    Batch using ``execution_role_arn``). ``gpus=0`` builds a CPU-only definition.
    """
    if vcpus < 1 or memory_mib < 1 or gpus < 0:
        raise ValueError(f"invalid resources: vcpus={vcpus} memory_mib={memory_mib} gpus={gpus}")
    if not 1 <= retry_attempts <= 10:
        raise ValueError("retry_attempts must be between 1 and 10 (AWS Batch limit)")
    if timeout_seconds < 60:
        raise ValueError("timeout_seconds must be at least 60 (AWS Batch minimum)")
    if not _JOB_NAME_RE.match(name):
        raise ValueError(f"invalid job definition name {name!r}")
    if secrets and not execution_role_arn:
        raise ValueError("secrets need an execution_role_arn that may read them")

    resources = [
        {"type": "VCPU", "value": str(int(vcpus))},
        {"type": "MEMORY", "value": str(int(memory_mib))},
    ]
    if gpus:
        resources.insert(0, {"type": "GPU", "value": str(int(gpus))})

    container: dict[str, Any] = {
        "image": image,
        "command": list(command or ["trainkite", "train", "--params", "Ref::params_file"]),
        "resourceRequirements": resources,
        "linuxParameters": {"sharedMemorySize": int(shared_memory_mib)},
        "privileged": False,
    }
    if job_role_arn:
        container["jobRoleArn"] = job_role_arn
    if execution_role_arn:
        container["executionRoleArn"] = execution_role_arn
    if environment:
        _reject_secret_like_env(environment)
        container["environment"] = [{"name": k, "value": v} for k, v in environment.items()]
    if secrets:
        container["secrets"] = [{"name": k, "valueFrom": arn} for k, arn in secrets.items()]
    if log_group:
        container["logConfiguration"] = {
            "logDriver": "awslogs",
            "options": {"awslogs-group": log_group, "awslogs-stream-prefix": "batch"},
        }

    retry = {**RETRY_STRATEGY, "attempts": int(retry_attempts)}
    retry["evaluateOnExit"] = [dict(rule) for rule in RETRY_STRATEGY["evaluateOnExit"]]
    spec: dict[str, Any] = {
        "jobDefinitionName": name,
        "type": "container",
        "platformCapabilities": ["EC2"],
        "containerProperties": container,
        "retryStrategy": retry,
        "timeout": {"attemptDurationSeconds": int(timeout_seconds)},
        "propagateTags": True,
    }
    if "Ref::params_file" in container["command"]:
        spec["parameters"] = {"params_file": "params/sentiment.toml"}
    return spec


# What register_job_definition takes back from a described definition (the rest is status, ARN, revision...).
_REGISTERABLE = (
    "type",
    "parameters",
    "schedulingPriority",
    "containerProperties",
    "retryStrategy",
    "propagateTags",
    "timeout",
    "tags",
    "platformCapabilities",
)


def job_definition_for_image(base: str, image: str, *, client: Any | None = None) -> str:
    """The ARN of a job definition that is `base` (its newest ACTIVE revision) with `image` as the container image.

    Batch's SubmitJob cannot override the image, so a build that pushed an image of its own commit needs a
    definition of its own: `<base>-img-<sha256(image)[:12]>`, registered once and reused by every run of that
    image. `base` itself is never touched: runs without an image keep getting the stack's definition.
    """
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"invalid container image {image!r}")
    batch = _client("batch", client)
    template = _template(batch, base)
    name = f"{template['jobDefinitionName']}-img-{hashlib.sha256(image.encode()).hexdigest()[:12]}"
    if not _JOB_NAME_RE.match(name):
        raise ValueError(f"job definition name {name!r} is too long: shorten {base!r}")
    mine = _newest_active(batch, name)
    if mine is not None and mine["containerProperties"].get("image") == image:
        return mine["jobDefinitionArn"]
    spec = {k: template[k] for k in _REGISTERABLE if k in template}
    spec["containerProperties"] = {**template["containerProperties"], "image": image}
    arn = batch.register_job_definition(jobDefinitionName=name, **spec)["jobDefinitionArn"]
    log.info("registered AWS Batch job definition %s (%s with image %s)", arn, base, image)
    return arn


def _template(batch: Any, base: str) -> dict[str, Any]:
    # An ARN or `name:revision` names one revision; a bare name means its newest ACTIVE one.
    if ":" in base:
        found = batch.describe_job_definitions(jobDefinitions=[base]).get("jobDefinitions", [])
        template = found[0] if found else None
    else:
        template = _newest_active(batch, base)
    if template is None or template.get("status", "ACTIVE") != "ACTIVE":
        raise BatchJobError(f"AWS Batch job definition {base!r} not found or not ACTIVE; deploy the stack first")
    return template


def _newest_active(batch: Any, name: str) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = []
    for page in batch.get_paginator("describe_job_definitions").paginate(jobDefinitionName=name, status="ACTIVE"):
        found.extend(page.get("jobDefinitions", []))
    return max(found, key=lambda d: d["revision"], default=None)


def _reject_secret_like_env(environment: Mapping[str, str]) -> None:
    bad = sorted(k for k in environment if _SECRET_NAME_RE.search(k))
    if bad:
        raise ValueError(
            f"{', '.join(bad)} look(s) like credentials: pass them as job-definition `secrets` "
            "(Secrets Manager ARN), not as plain environment values"
        )


def submit_training_job(
    *,
    job_name: str,
    job_queue: str,
    job_definition: str,
    command: list[str],
    environment: dict[str, str],
    client: Any | None = None,
) -> str:
    """Submit one training job and return its job id.

    ``command`` replaces the job definition's command (the image's entrypoint stays
    ``trainkite-container``, which execs it); ``environment`` is added to the container's
    environment (e.g. ``MODEL_ID``, ``BUILDKITE_BUILD_URL``). Credentials are refused
    here: they belong in the job definition's ``secrets``.
    """
    if not _JOB_NAME_RE.match(job_name):
        raise ValueError(
            f"invalid AWS Batch job name {job_name!r}: 1-128 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    if not command or not all(isinstance(part, str) for part in command):
        raise ValueError("command must be a non-empty list of strings")
    _reject_secret_like_env(environment)
    batch = _client("batch", client)
    response = batch.submit_job(
        jobName=job_name,
        jobQueue=job_queue,
        jobDefinition=job_definition,
        containerOverrides={
            "command": list(command),
            "environment": [{"name": k, "value": str(v)} for k, v in environment.items()],
        },
        propagateTags=True,
        tags={"trainkite:job-name": job_name},
    )
    job_id = response["jobId"]
    log.info("submitted AWS Batch job %s (%s) to %s", job_id, job_name, job_queue)
    return job_id


def _describe(batch: Any, job_id: str) -> dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        jobs = batch.describe_jobs(jobs=[job_id]).get("jobs", [])
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in {"ClientException", "InvalidParameterValueException", "ValidationException"}:
            raise BatchJobNotFound(f"AWS Batch job {job_id!r} not found: {exc}") from exc
        raise
    if not jobs:
        raise BatchJobNotFound(
            f"AWS Batch job {job_id!r} not found (wrong id, region or account? "
            "Batch forgets jobs about 7 days after they finish)"
        )
    return jobs[0]


def _result_from_job(job: Mapping[str, Any]) -> BatchJobResult:
    attempts = list(job.get("attempts") or [])
    last_attempt = attempts[-1] if attempts else {}
    container = job.get("container") or {}
    attempt_container = last_attempt.get("container") or {}
    reason = (
        job.get("statusReason")
        or last_attempt.get("statusReason")
        or container.get("reason")
        or attempt_container.get("reason")
    )
    exit_code = container.get("exitCode", attempt_container.get("exitCode"))
    log_stream = container.get("logStreamName") or attempt_container.get("logStreamName")
    log_options = (container.get("logConfiguration") or {}).get("options") or {}
    return BatchJobResult(
        job_id=job["jobId"],
        status=job["status"],
        status_reason=reason,
        attempts=len(attempts),
        log_stream_name=log_stream,
        exit_code=int(exit_code) if exit_code is not None else None,
        job_name=job.get("jobName"),
        log_group=log_options.get("awslogs-group", DEFAULT_LOG_GROUP),
    )


def _log_tail(logs: Any, group: str, stream: str, lines: int) -> tuple[str, ...]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        events = logs.get_log_events(logGroupName=group, logStreamName=stream, limit=lines, startFromHead=False).get(
            "events", []
        )
    except (BotoCoreError, ClientError) as exc:  # best effort: a missing stream must not hide the failure
        log.warning("could not read %s/%s: %s", group, stream, exc)
        return ()
    return tuple(e.get("message", "").rstrip("\n") for e in events)


def wait_for_job(
    job_id: str,
    *,
    client: Any | None = None,
    poll_seconds: float = 30.0,
    timeout_seconds: float = 24 * 3600.0,
    logs_client: Any | None = None,
    log_tail_lines: int = 50,
    sleep: Callable[[float], None] = time.sleep,
    terminate_if_abandoned: bool = False,
) -> BatchJobResult:
    """Poll ``describe_jobs`` until the job is SUCCEEDED or FAILED and return the result.

    A FAILED job is *returned* (``result.raise_for_status()`` raises
    :class:`BatchJobFailed`), so the caller decides. Raises :class:`BatchJobNotFound`
    for an unknown id and :class:`BatchJobTimeout` after ``timeout_seconds`` (the loop
    makes at most ``timeout_seconds / poll_seconds + 1`` calls). With ``logs_client``,
    the tail of a failed job's log stream is attached to the result.

    With ``terminate_if_abandoned``, a wait that ends before the job does (timeout, a cancelled
    run's TerminationSignal, Ctrl-C) terminates the job first: the caller is about to report
    failure, and a job left running would train for nobody.
    """
    if not job_id or not isinstance(job_id, str):
        raise BatchJobNotFound(f"invalid AWS Batch job id {job_id!r}")
    if poll_seconds <= 0 or timeout_seconds < 0:
        raise ValueError("poll_seconds must be > 0 and timeout_seconds >= 0")
    try:
        return _wait(
            job_id,
            client=client,
            poll_seconds=poll_seconds,
            timeout_seconds=timeout_seconds,
            logs_client=logs_client,
            log_tail_lines=log_tail_lines,
            sleep=sleep,
        )
    except BatchJobNotFound:
        raise
    except BaseException as stopped:
        if terminate_if_abandoned:
            try:
                terminate_job(
                    job_id,
                    f"trainkite: the run waiting for this job stopped ({type(stopped).__name__}: {str(stopped)[:300]})",
                    client=client,
                )
            except Exception as err:  # never mask why the wait ended
                log.error("could not terminate AWS Batch job %s: %s", job_id, err)
        raise


def _wait(
    job_id: str,
    *,
    client: Any | None,
    poll_seconds: float,
    timeout_seconds: float,
    logs_client: Any | None,
    log_tail_lines: int,
    sleep: Callable[[float], None],
) -> BatchJobResult:
    batch = _client("batch", client)
    max_polls = math.floor(timeout_seconds / poll_seconds) + 1
    deadline = time.monotonic() + timeout_seconds
    last_status = "UNKNOWN"
    for poll in range(max_polls):
        job = _describe(batch, job_id)
        status = job["status"]
        if status != last_status:
            log.info("AWS Batch job %s: %s", job_id, status)
            last_status = status
        if status in TERMINAL_STATUSES:
            result = _result_from_job(job)
            if not result.succeeded and result.log_stream_name and logs_client is not None:
                tail = _log_tail(logs_client, result.log_group, result.log_stream_name, log_tail_lines)
                result = replace(result, log_tail=tail)
            return result
        if poll == max_polls - 1 or time.monotonic() >= deadline:
            break
        sleep(poll_seconds)
    raise BatchJobTimeout(job_id, last_status, timeout_seconds)


def terminate_job(job_id: str, reason: str, *, client: Any | None = None) -> None:
    """Stop a job nobody waits for any more (its run was cancelled or gave up): a queued job is cancelled,
    a running one's container is stopped; the job ends FAILED with `reason`. Batch allows 1,024
    characters of reason."""
    _client("batch", client).terminate_job(jobId=job_id, reason=reason[:1024])
    log.info("terminated AWS Batch job %s: %s", job_id, reason)
