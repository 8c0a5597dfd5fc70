"""Deploy a published model: verify it, ship `model.tar.gz` to the production bucket, point a SageMaker
endpoint at it, smoke-test it, and roll back when it misbehaves.

Plain functions; AWS clients are arguments, so tests pass moto-backed or `Stubber`-wrapped ones.
SageMaker facts this code is built around (shared/reference/aws.md §6.2):
- endpoint configs are immutable: every deploy makes a new model and config with unique names;
- a failed update returns the endpoint to InService *on the old config*, so InService alone proves
  nothing: the config name is compared after every switch;
- the old config and model are deleted only after the new one is confirmed and smoke-tested.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.notify import model_env
from trainkite.errors import TrainkiteError, UserInputError
from trainkite.ids import validate_model_id
from trainkite.lineage import file_sha256
from trainkite.manifest import fetch_model
from trainkite.store import ArtifactStore, S3Store

log = logging.getLogger("trainkite.deploy")

SMOKE_TEXT = "trainkite deployment smoke test: the team is great but the workload is heavy"
_NAME_MAX = 63
_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")
_SECRETISH = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|PRIVATE|CREDENTIAL", re.I)


class DeployError(TrainkiteError):
    """A deployment that did not happen (or was rolled back); `details` go into the deployment log."""

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.details = details


@contextlib.contextmanager
def aws_errors(what: str):
    """An AWS refusal (access denied, validation, throttling) as one DeployError line, not a traceback."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as err:
        e = err.response.get("Error", {})
        raise DeployError(f"{what}: {e.get('Code', 'error')}: {e.get('Message', err)}") from None
    except BotoCoreError as err:
        raise DeployError(f"{what}: {err}") from None


class Candidate(BaseModel):
    """A published model whose files were verified against its manifest."""

    model_id: str
    model_name: str
    folder: str
    manifest: dict

    @property
    def created_at(self) -> str:
        return self.manifest.get("created_at", "")

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics", {})


def load_candidate(store: ArtifactStore, model_id: str) -> Candidate:
    """The model's verified local folder; no manifest or a hash mismatch raises IntegrityError."""
    validate_model_id(model_id)
    folder, manifest = fetch_model(store, model_id)
    return Candidate(model_id=model_id, model_name=manifest["model_name"], folder=str(folder), manifest=manifest)


def _when(stamp: str) -> datetime:
    dt = datetime.fromisoformat(stamp)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def check_not_older(candidate: Candidate, live: dict | None, allow_older: bool) -> None:
    """Refuse to replace the live model with one trained before it, unless asked to (a deliberate rollback)."""
    if live is None or allow_older or live.get("model_id") == candidate.model_id:
        return
    live_created = live.get("model_created_at")
    if not live_created or not candidate.created_at:
        return
    if _when(candidate.created_at) < _when(live_created):
        raise UserInputError(
            f"model {candidate.model_id} (created {candidate.created_at}) is older than {live['model_id']} "
            f"(created {live_created}), live on {live['target']} {live['endpoint']} since {live['time']}; "
            "pass --allow-older to roll back to it on purpose"
        )


def sagemaker_name(text: str, max_len: int = _NAME_MAX) -> str:
    """A SageMaker resource name: letters, digits and hyphens, alphanumeric at both ends."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", text)[:max_len].strip("-")
    if not name:
        raise UserInputError(f"{text!r} cannot be turned into a SageMaker name (letters, digits, '-')")
    return name


def resource_name(model_id: str, stamp: str | None = None) -> str:
    """`<model-id>-<utc time>-<random>`: unique per deploy, and the model ID is readable in the console."""
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    suffix = f"-{stamp}-{secrets.token_hex(2)}"
    return sagemaker_name(model_id, _NAME_MAX - len(suffix)) + suffix


def endpoint_name(configured: str | None, model_name: str) -> str:
    if configured:
        if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", configured):
            raise UserInputError(
                f"deploy.endpoint_name {configured!r}: letters, digits and '-' only, at most 63, "
                "starting and ending with a letter or digit"
            )
        return configured
    return sagemaker_name(f"trainkite-{model_name}")


def target_endpoint(target: str, configured: str | None, model_name: str, local_port: int) -> str:
    """What "where" means in the deployment log: the SageMaker endpoint name, or the local server's URL."""
    if target == "local":
        return f"http://127.0.0.1:{local_port}"
    return endpoint_name(configured, model_name)


def serving_env(model_id: str, model_data_url: str) -> dict[str, str]:
    """The `model-env` contract; a value that looks like a secret (not an ARN) is refused, never shipped."""
    env = model_env(model_id, model_data_url)
    for key, value in env.items():
        if _SECRETISH.search(key) and not value.startswith("arn:"):
            raise UserInputError(f"serving env {key} looks like a secret value; pass its ARN instead")
    return env


def resource_tags(candidate: Candidate) -> list[dict[str, str]]:
    lineage = candidate.manifest.get("lineage") or {}
    build = lineage.get("build") or {}
    git = lineage.get("git") or {}

    def clean(value: object) -> str:
        # Tag values allow letters, digits, spaces and _.:/=+-@ only, up to 256 characters.
        return re.sub(r"[^\w .:/=+\-@]", "_", str(value))[:256] if value else "none"

    return [
        {"Key": "model-id", "Value": clean(candidate.model_id)},
        {"Key": "model-name", "Value": clean(candidate.model_name)},
        {"Key": "build-url", "Value": clean(build.get("url"))},
        {"Key": "commit", "Value": clean(git.get("commit"))},
        {"Key": "managed-by", "Value": "trainkite"},
    ]


def docker_image(candidate: Candidate, override: str | None) -> str:
    image = override or (candidate.manifest.get("lineage") or {}).get("docker_image")
    if not image:
        raise UserInputError(
            f"model {candidate.model_id} has no lineage.docker_image (it was trained outside "
            "an image); set deploy.image (--image) to the serving image URI"
        )
    return image


def production_store(root: str | None) -> S3Store:
    if not root or not root.startswith("s3://"):
        raise UserInputError(
            f"deploy.production_root is {root!r}: set it to the production bucket "
            "(s3://bucket/prefix) SageMaker reads model.tar.gz from"
        )
    return S3Store(root)


def upload_archive(prod: ArtifactStore, archive: dict, candidate: Candidate) -> dict:
    """Copy model.tar.gz to the production bucket, then read it back: size and sha256 must match."""
    key = f"{candidate.model_name}/{candidate.model_id}/model.tar.gz"
    prod.put_file(Path(archive["path"]), key)
    with tempfile.TemporaryDirectory(prefix="trainkite-verify-") as tmp:
        copy = Path(tmp) / "model.tar.gz"
        prod.download(key, copy)
        size, digest = copy.stat().st_size, file_sha256(copy)
    if size != archive["size"] or digest != archive["sha256"]:
        raise DeployError(
            f"{prod.uri(key)} does not match the archive built here (size {size} vs "
            f"{archive['size']}, sha256 {digest[:12]} vs {archive['sha256'][:12]}); not deploying it"
        )
    return {"uri": prod.uri(key), "sha256": digest, "size": size}


def create_model_and_config(
    sm,
    *,
    name: str,
    image: str,
    role_arn: str | None,
    model_data_url: str,
    env: dict[str, str],
    tags: list[dict[str, str]],
    instance_type: str,
    instance_count: int,
) -> dict[str, str]:
    if not role_arn:
        raise UserInputError(
            "deploy.execution_role_arn is not set: the IAM role SageMaker assumes to pull the "
            "image and read the production bucket"
        )
    with aws_errors(f"create SageMaker model {name}"):
        sm.create_model(
            ModelName=name,
            ExecutionRoleArn=role_arn,
            Tags=tags,
            PrimaryContainer={"Image": image, "ModelDataUrl": model_data_url, "Environment": env},
        )
    with aws_errors(f"create endpoint config {name}"):
        sm.create_endpoint_config(
            EndpointConfigName=name,
            Tags=tags,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": name,
                    "InitialInstanceCount": instance_count,
                    "InstanceType": instance_type,
                    "InitialVariantWeight": 1.0,
                }
            ],
        )
    return {"model": name, "config": name}


def describe(sm, endpoint: str) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return sm.describe_endpoint(EndpointName=endpoint)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "ValidationException" and "Could not find" in err.response.get(
            "Error", {}
        ).get("Message", ""):
            return None
        raise


def wait_in_service(sm, endpoint: str, *, delay_s: float, timeout_s: float, sleep=time.sleep) -> dict:
    """Poll until InService; Failed (or a failed rollback) ends the wait at once with SageMaker's reason."""
    deadline = time.monotonic() + timeout_s
    while True:
        desc = describe(sm, endpoint)
        if desc is None:
            raise DeployError(f"endpoint {endpoint} disappeared while waiting for it to be InService")
        status = desc["EndpointStatus"]
        if status == "InService":
            return desc
        if status not in _BUSY:
            reason = desc.get("FailureReason") or "no FailureReason given"
            raise DeployError(f"endpoint {endpoint} is {status}: {reason}", endpoint_status=status)
        if time.monotonic() >= deadline:
            raise DeployError(
                f"endpoint {endpoint} still {status} after {timeout_s:.0f}s; check the SageMaker "
                "console, it may still finish",
                endpoint_status=status,
            )
        sleep(delay_s)


def _switch(sm, endpoint: str, config: str, *, create: bool, tags, delay_s: float, timeout_s: float, sleep) -> None:
    if create:
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=config, Tags=tags)
    else:
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=config)
    # InService alone proves nothing: a failed update also ends InService, on the old config.
    desc = wait_in_service(sm, endpoint, delay_s=delay_s, timeout_s=timeout_s, sleep=sleep)
    actual = desc.get("EndpointConfigName")
    if actual != config:
        reason = desc.get("FailureReason") or "no FailureReason given"
        raise DeployError(
            f"endpoint {endpoint} is InService on config {actual}, not {config}: SageMaker rolled "
            f"the update back ({reason})",
            endpoint_config=actual,
        )


def smoke_test(runtime, endpoint: str, model_id: str, text: str = SMOKE_TEXT) -> dict:
    """One real invocation: the reply must parse and name the model we just deployed."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        resp = runtime.invoke_endpoint(
            EndpointName=endpoint,
            ContentType="application/json",
            Accept="application/json",
            Body=json.dumps({"instances": [text]}).encode(),
        )
        raw = resp["Body"].read()
    except (ClientError, BotoCoreError) as err:
        raise DeployError(f"smoke test of {endpoint} failed: {err}") from None
    try:
        doc = json.loads(raw)
        pred = doc["predictions"][0]
        served = doc["model_id"]
        if not isinstance(pred, dict) or "label" not in pred or pred.get("model_id") != served:
            raise ValueError("predictions[0] has no label or a different model_id")
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise DeployError(
            f"smoke test of {endpoint}: the reply is not a trainkite prediction ({err}): {raw[:200]!r}"
        ) from None
    if served != model_id:
        raise DeployError(f"smoke test of {endpoint}: it serves model {served}, not {model_id}")
    return pred


def roll_out(
    sm,
    runtime,
    *,
    endpoint: str,
    config: str,
    model_id: str,
    tags: list[dict[str, str]],
    delay_s: float = 30,
    timeout_s: float = 3600,
    smoke_text: str = SMOKE_TEXT,
    sleep=time.sleep,
) -> dict:
    """Create the endpoint on `config`, or update it; confirm, smoke-test, roll back to the old config on failure.

    Returns {"action": "created"|"updated", "previous_config": ..., "smoke": prediction}.
    """
    with aws_errors(f"roll out endpoint {endpoint}"):
        return _roll_out(
            sm,
            runtime,
            endpoint=endpoint,
            config=config,
            model_id=model_id,
            tags=tags,
            delay_s=delay_s,
            timeout_s=timeout_s,
            smoke_text=smoke_text,
            sleep=sleep,
        )


def _roll_out(sm, runtime, *, endpoint, config, model_id, tags, delay_s, timeout_s, smoke_text, sleep) -> dict:
    current = describe(sm, endpoint)
    previous = current.get("EndpointConfigName") if current else None
    if current and current["EndpointStatus"] != "InService":
        reason = f" ({current['FailureReason']})" if current.get("FailureReason") else ""
        hint = "wait for it to finish" if current["EndpointStatus"] in _BUSY else "delete it or deploy to another name"
        raise DeployError(
            f"endpoint {endpoint} is {current['EndpointStatus']}{reason}; {hint}", previous_config=previous
        )
    action = "updated" if current else "created"
    log.info("%s endpoint %s on config %s", "updating" if current else "creating", endpoint, config)
    _switch(sm, endpoint, config, create=current is None, tags=tags, delay_s=delay_s, timeout_s=timeout_s, sleep=sleep)
    try:
        pred = smoke_test(runtime, endpoint, model_id, smoke_text)
    except DeployError as err:
        if previous is None:
            raise DeployError(
                f"{err}; endpoint {endpoint} was just created, so there is no previous config "
                "to roll back to: inspect or delete it",
                previous_config=None,
            ) from None
        log.warning("%s; rolling %s back to %s", err, endpoint, previous)
        try:
            _switch(sm, endpoint, previous, create=False, tags=tags, delay_s=delay_s, timeout_s=timeout_s, sleep=sleep)
        except DeployError as rollback_err:
            raise DeployError(
                f"{err}; rolling back to {previous} ALSO failed: {rollback_err}",
                previous_config=previous,
                rolled_back=False,
            ) from None
        raise DeployError(
            f"{err}; rolled endpoint {endpoint} back to config {previous}", previous_config=previous, rolled_back=True
        ) from None
    return {"action": action, "previous_config": previous, "smoke": pred}


def delete_superseded(sm, config: str) -> list[str]:
    """Delete an old endpoint config and the models it names; failures are logged, the deploy stands."""
    from botocore.exceptions import ClientError

    deleted = []
    try:
        models = [v["ModelName"] for v in sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]]
        sm.delete_endpoint_config(EndpointConfigName=config)
        deleted.append(f"endpoint-config/{config}")
        for model in models:
            sm.delete_model(ModelName=model)
            deleted.append(f"model/{model}")
    except ClientError as err:
        log.warning("could not delete superseded %s: %s", config, err)
    return deleted


def approval_markdown(candidate: Candidate, live: dict | None, champion: dict, target: str, endpoint: str) -> str:
    """What a reviewer sees on the Prefect resume form: the candidate's metrics next to the live model's."""
    names = sorted(set(candidate.metrics) | set(champion))
    champ_id = live["model_id"] if live else "none"
    rows = "\n".join(
        f"| {k} | {candidate.metrics.get(k, float('nan')):.4f} | "
        + (f"{champion[k]:.4f}" if k in champion else "-")
        + " |"
        for k in names
    )
    where = f"`{target}` endpoint `{endpoint}`"
    head = f"### Deploy `{candidate.model_id}` to {where}?\n\n"
    if live:
        head += f"Live now: `{champ_id}` (since {live['time']}, approved by {live.get('approved_by') or 'nobody'}).\n\n"
    else:
        head += "Nothing is live there yet.\n\n"
    return head + f"| metric | candidate `{candidate.model_id}` | live `{champ_id}` |\n|---|---|---|\n{rows}\n"
