"""The deployment log: one JSON object per deployment attempt under `<store>/_deployments/`.

One object per attempt (never an appended file) keeps concurrent deploys safe on S3 and on a
local folder: each write is a single atomic put of a key nobody else writes, so there is no
read-modify-write to lose. "What is live where" is the newest `deployed` record per target and
endpoint.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from trainkite.store import ArtifactStore

PREFIX = "_deployments"
STATUSES = ("deployed", "failed", "rejected", "approval_timeout")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def new_record(
    *, model_id: str, model_name: str, target: str, endpoint: str, status: str, **fields: Any
) -> dict[str, Any]:
    if status not in STATUSES:
        raise ValueError(f"deployment status {status!r}; allowed: {', '.join(STATUSES)}")
    time = fields.pop("time", None) or now()
    stamp = datetime.fromisoformat(time).strftime("%Y%m%dT%H%M%S%fZ")
    record = {
        "id": f"{stamp}-{model_id}-{secrets.token_hex(3)}",
        "time": time,
        "model_id": model_id,
        "model_name": model_name,
        "target": target,
        "endpoint": endpoint,
        "status": status,
        "approved_by": None,
        "previous_model_id": None,
    }
    record.update(fields)
    return record


def write(store: ArtifactStore, record: dict[str, Any]) -> str:
    key = f"{PREFIX}/{record['id']}.json"
    store.put_bytes(json.dumps(record, indent=2, sort_keys=True, default=str).encode(), key)
    return key


def read_records(store: ArtifactStore, prefix: str) -> list[dict[str, Any]]:
    """Every JSON record under `prefix`, oldest first; a file that is not JSON was not written by us and must not
    hide the others."""
    out = []
    for key in store.list(prefix):
        if not key.endswith(".json"):
            continue
        try:
            out.append(json.loads(store.get_bytes(key)))
        except ValueError:
            continue
    return sorted(out, key=lambda r: (r.get("time", ""), r.get("id", "")))


def read_log(store: ArtifactStore) -> list[dict[str, Any]]:
    """Every record, oldest first."""
    return read_records(store, PREFIX)


def live(records: list[dict[str, Any]], target: str, endpoint: str) -> dict[str, Any] | None:
    for record in reversed(records):
        if record.get("target") == target and record.get("endpoint") == endpoint and record["status"] == "deployed":
            return record
    return None


def live_everywhere(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live record of every (target, endpoint) that has one."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record.get("status") == "deployed":
            seen[(record["target"], record["endpoint"])] = record
    return sorted(seen.values(), key=lambda r: (r["target"], r["endpoint"]))
