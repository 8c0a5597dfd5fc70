"""Model aliases: which model is the `champion` of a model name on a deploy target.

The champion is read, never stored as mutable state: it is the newest of
- the deployment log's `deployed` records for that model name and target (tasks/deploy_log.py), and
- explicit `trainkite alias set champion MODEL_ID` records, one JSON object per call under
  `<store>/_aliases/` (who, when, why), written like the deployment log: one atomic put of a key
  nobody else writes, so two people setting an alias at once cannot lose either record.

So a deploy makes its model the champion, and a person can name another one (a rollback that was done
by hand, a model promoted outside trainkite) until the next deploy; every change stays on record.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tasks import deploy_log
from trainkite.errors import UserInputError
from trainkite.manifest import find_model, read_manifest
from trainkite.store import ArtifactStore

PREFIX = "_aliases"
ALIASES = ("champion",)
TARGETS = ("sagemaker", "local")


def check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise UserInputError(f"alias {alias!r} is not known; known aliases: {', '.join(ALIASES)}")
    return alias


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise UserInputError(f"--target {target!r}: one of {', '.join(TARGETS)}")
    return target


def who(env: Mapping[str, str] | None = None) -> str:
    """The person behind this call: the Buildkite unblocker inside a build step, else the OS user."""
    env = os.environ if env is None else env
    for name in ("BUILDKITE_UNBLOCKER", "BUILDKITE_BUILD_CREATOR"):
        if env.get(name):
            return env[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def set_alias(
    store: ArtifactStore,
    alias: str,
    model_id: str,
    *,
    target: str,
    set_by: str,
    reason: str | None = None,
    time: str | None = None,
) -> dict[str, Any]:
    """Record that `model_id` is `alias` on `target`; the model must be published in `store`."""
    check_alias(alias)
    check_target(target)
    ref = find_model(store, model_id)  # unknown or unpublished IDs are refused before anything is written
    manifest = read_manifest(store, ref)
    time = time or datetime.now(UTC).isoformat(timespec="microseconds")
    stamp = datetime.fromisoformat(time).strftime("%Y%m%dT%H%M%S%fZ")
    record = {
        "id": f"{stamp}-{alias}-{model_id}-{secrets.token_hex(3)}",
        "time": time,
        "alias": alias,
        "model_id": model_id,
        "model_name": ref.name,
        "model_created_at": manifest.get("created_at"),
        "target": target,
        "set_by": set_by,
        "reason": reason,
    }
    store.put_bytes(json.dumps(record, indent=2, sort_keys=True).encode(), f"{PREFIX}/{record['id']}.json")
    return record


def read_aliases(store: ArtifactStore) -> list[dict[str, Any]]:
    return deploy_log.read_records(store, PREFIX)


def _from_deploy(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "alias": "champion",
        "model_id": record["model_id"],
        "model_name": record.get("model_name"),
        "target": record.get("target"),
        "endpoint": record.get("endpoint"),
        "since": record.get("time"),
        "set_by": record.get("approved_by"),
        "source": "deployment",
        "record": record.get("id"),
    }


def _from_alias(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "alias": record["alias"],
        "model_id": record["model_id"],
        "model_name": record.get("model_name"),
        "target": record.get("target"),
        "endpoint": None,
        "since": record.get("time"),
        "set_by": record.get("set_by"),
        "source": "alias set",
        "reason": record.get("reason"),
        "record": record.get("id"),
    }


def all_champions(store: ArtifactStore) -> list[dict[str, Any]]:
    """The champion of every (model name, target) that has one, from both logs."""
    events = [_from_deploy(r) for r in deploy_log.read_log(store) if r.get("status") == "deployed"]
    events += [_from_alias(r) for r in read_aliases(store) if r.get("alias") == "champion"]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: (e["since"] or "", e["record"] or "")):
        latest[(event["model_name"], event["target"])] = event
    return sorted(latest.values(), key=lambda e: (e["model_name"] or "", e["target"] or ""))


def champion(store: ArtifactStore, model_name: str, target: str) -> dict[str, Any] | None:
    return next((c for c in all_champions(store) if c["model_name"] == model_name and c["target"] == target), None)


def champion_for_training(
    store: ArtifactStore, model_name: str, env: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The model a new one is compared with: on TRAINKITE_CHAMPION_TARGET or TRAINKITE_DEPLOY_TARGET when
    set, else the production (sagemaker) champion, else the local one."""
    env = os.environ if env is None else env
    chosen = env.get("TRAINKITE_CHAMPION_TARGET") or env.get("TRAINKITE_DEPLOY_TARGET")
    for target in [chosen] if chosen else TARGETS:
        found = champion(store, model_name, target)
        if found:
            return found
    return None
