"""Models in the store: publish (manifest written last), find, list, fetch-and-verify.

A model is `<root>/<name>/<model-id>/` with `manifest.json`. No manifest = not a model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainkite.errors import IntegrityError, ModelIdTaken, ModelNotFound
from trainkite.home import cache_dir
from trainkite.ids import validate_model_id
from trainkite.lineage import file_sha256
from trainkite.store import ArtifactStore, LocalStore

MANIFEST = "manifest.json"
SCHEMA = "trainkite.manifest/1"
# `<root>/_claims/<name>/<model-id>`: which files a publish of that model ID is committed to (see publish).
CLAIMS = "_claims"
# lineage.data.schemas: the layout of the snapshot (and its fingerprint) and of the features a model was
# built from, e.g. {"snapshot": 2, "features": 2}. Models made before the field existed are schema 1 of both.
SCHEMAS_FIELD = "schemas"
# Written during training, deliberately outside the hashed model files.
SCRATCH_PREFIXES = ("checkpoints/",)


@dataclass(frozen=True)
class ModelRef:
    name: str
    model_id: str

    @property
    def prefix(self) -> str:
        return f"{self.name}/{self.model_id}"


def model_prefix(name: str, model_id: str) -> str:
    return f"{name}/{validate_model_id(model_id)}"


def publish(store: ArtifactStore, ref: ModelRef, files: dict[str, Path], manifest: dict[str, Any]) -> dict:
    """Upload `files` (relative name -> local path), then the manifest with their hashes.

    Idempotent for a retried run: if the model is already published with the same file hashes it
    returns the existing manifest; a different model under the same ID is refused.
    """
    hashes = {rel: {"sha256": file_sha256(p), "size": p.stat().st_size} for rel, p in sorted(files.items())}
    manifest_key = f"{ref.prefix}/{MANIFEST}"
    if store.exists(manifest_key):
        existing = json.loads(store.get_bytes(manifest_key))
        if existing.get("files") == hashes:
            return existing
        raise ModelIdTaken(
            f"model {ref.model_id} is already published at {store.uri(ref.prefix)} with different files; "
            "a model ID is never reused (start a new build or run)"
        )
    # Reliability fix (issue 8): two runs publishing the same model ID at once used to interleave their
    # uploads, leaving a folder of mixed files under a manifest that matched neither. The first run to
    # claim the ID (an atomic create-only write of its files' hash) publishes; a run with the same files
    # (a retry) carries on, one with other files is refused before it writes anything.
    claim_key = f"{CLAIMS}/{ref.name}/{ref.model_id}"
    claim = hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()
    if not store.put_bytes_if_absent(claim.encode(), claim_key) and store.get_bytes(claim_key).decode() != claim:
        raise ModelIdTaken(
            f"model {ref.model_id} is being published to {store.uri(ref.prefix)} by another run with different "
            f"files; a model ID is never reused (start a new build or run). If no other run is publishing it, "
            f"an earlier attempt crashed: delete {store.uri(claim_key)} and re-run"
        )
    for rel, path in sorted(files.items()):
        store.put_file(path, f"{ref.prefix}/{rel}")
    manifest = {
        "schema": SCHEMA,
        "model_id": ref.model_id,
        "model_name": ref.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": hashes,
    }
    store.put_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode(), manifest_key)
    return manifest


def find_model(store: ArtifactStore, model_id: str) -> ModelRef:
    validate_model_id(model_id)
    for name in store.list_dirs(""):
        if name.startswith("_"):
            continue
        if store.exists(f"{name}/{model_id}/{MANIFEST}"):
            return ModelRef(name, model_id)
    for name in store.list_dirs(""):
        if model_id in store.list_dirs(name):
            raise IntegrityError(
                f"{store.uri(f'{name}/{model_id}')} has no {MANIFEST}: it is not a model "
                "(an unfinished or failed run); nothing to load"
            )
    raise ModelNotFound(f"no model {model_id!r} in {store.root}; `trainkite models` lists the models there")


def read_manifest(store: ArtifactStore, ref: ModelRef) -> dict[str, Any]:
    try:
        return json.loads(store.get_bytes(f"{ref.prefix}/{MANIFEST}"))
    except (ValueError, UnicodeDecodeError) as err:
        raise IntegrityError(f"{store.uri(ref.prefix)}/{MANIFEST} is not valid JSON: {err}") from None


def list_models(store: ArtifactStore) -> list[dict[str, Any]]:
    out = []
    for name in store.list_dirs(""):
        if name.startswith("_"):
            continue
        for model_id in store.list_dirs(name):
            if store.exists(f"{name}/{model_id}/{MANIFEST}"):
                m = read_manifest(store, ModelRef(name, model_id))
                out.append(m)
    return sorted(out, key=lambda m: m.get("created_at", ""))


def verify_dir(folder: Path, manifest: dict[str, Any], may_be_absent: tuple[str, ...] = ()) -> None:
    """Every file the manifest lists exists with its sha256; the first mismatch is named.

    Files under `may_be_absent` prefixes may be missing (a serving archive leaves the training data
    out), but one that is present must still match.
    """
    for rel, meta in sorted(manifest.get("files", {}).items()):
        path = folder / rel
        if not path.is_file():
            if rel.startswith(may_be_absent):
                continue
            raise IntegrityError(f"model {manifest.get('model_id')}: {rel} is missing")
        if file_sha256(path) != meta["sha256"]:
            raise IntegrityError(
                f"model {manifest.get('model_id')}: {rel} does not match its sha256 in {MANIFEST} "
                "(tampered or corrupted); refusing to load it"
            )


def fetch_model(store: ArtifactStore, model_id: str) -> tuple[Path, dict[str, Any]]:
    """A verified local folder with the model's files (the store itself for a local root)."""
    ref = find_model(store, model_id)
    manifest = read_manifest(store, ref)
    local = store.local_path(ref.prefix) if isinstance(store, LocalStore) else None
    if local is None:
        local = cache_dir() / "models" / ref.name / ref.model_id
        if not (local / MANIFEST).is_file():
            tmp = Path(tempfile.mkdtemp(dir=local.parent if local.parent.exists() else None))
            try:
                for rel in manifest.get("files", {}):
                    store.download(f"{ref.prefix}/{rel}", tmp / rel)
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
                local.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(local, ignore_errors=True)
                shutil.move(str(tmp), local)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    verify_dir(local, manifest)
    return local, manifest


# What a serving container does not need: the training rows stay in the artifact store, never on an endpoint.
NOT_SERVED = ("data/", "plots/")


def load_dir_manifest(folder: Path) -> dict[str, Any]:
    """Manifest of a model folder outside any store (SageMaker's /opt/ml/model), verified."""
    path = folder / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{folder} has no {MANIFEST}: not a trainkite model")
    manifest = json.loads(path.read_text())
    verify_dir(folder, manifest, may_be_absent=NOT_SERVED)
    return manifest


def recorded_schemas(manifest: dict[str, Any]) -> dict[str, int]:
    """The snapshot and feature schema versions a model was made with (1 for models older than the field)."""
    recorded = (manifest.get("lineage") or {}).get("data", {}).get(SCHEMAS_FIELD) or {}
    return {"snapshot": int(recorded.get("snapshot", 1)), "features": int(recorded.get("features", 1))}
