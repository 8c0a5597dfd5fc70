"""Models in the store: publish (manifest written last), find, list, fetch-and-verify.

A model is `<root>/<name>/<model-id>/` with `manifest.json`. No manifest = not a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainkite.errors import IntegrityError, ModelIdTaken, ModelNotFound, UserInputError
from trainkite.home import cache_dir
from trainkite.ids import validate_model_id
from trainkite.lineage import file_sha256
from trainkite.store import ArtifactStore, LocalStore

log = logging.getLogger("trainkite.manifest")

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
        if isinstance(existing, dict) and existing.get("files") == hashes:
            return existing
        raise ModelIdTaken(
            f"model {ref.model_id} is already published at {store.uri(ref.prefix)} with different files; "
            "a model ID is never reused (start a new build or run)"
        )
    # Two runs publishing the same model ID at once used to interleave their
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


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _safe_rel(rel: object) -> bool:
    """A file name the manifest may list: relative, POSIX, inside the model folder, not the manifest itself."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts) and rel != MANIFEST


def validate_manifest(manifest: object, where: str, model_id: str | None = None) -> dict[str, Any]:
    """The manifest's schema, or IntegrityError naming what is wrong: a model that cannot be verified is refused.

    Required: an object with `model_id` (the folder's, when known), `model_name`, and a non-empty `files` whose
    every entry is a safe relative name with a 64-hex `sha256`: nothing in a model goes unhashed, and nothing
    hashed lies outside its folder.
    """

    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"{where} {what}; it cannot be verified, so it is not loaded")

    if not isinstance(manifest, dict):
        raise bad(f"is a JSON {type(manifest).__name__}, not an object")
    mid = manifest.get("model_id")
    if not isinstance(mid, str) or not mid:
        raise bad("has no model_id")
    if model_id is not None and mid != model_id:
        raise bad(f"names model {mid!r}, not the folder's {model_id!r}")
    if not isinstance(manifest.get("model_name"), str):
        raise bad("has no model_name")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("lists no files (no 'files', or it is empty)")
    for rel, meta in files.items():
        if not _safe_rel(rel):
            raise bad(f"lists {rel!r}, which is not a plain path inside the model folder")
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not _SHA256.match(meta["sha256"]):
            raise bad(f"has no valid sha256 for {rel}")
        if "size" in meta and (not isinstance(meta["size"], int) or meta["size"] < 0):
            raise bad(f"has an invalid size for {rel}")
    for key, kind in (("created_at", str), ("metrics", dict), ("lineage", dict), ("labels", list)):
        if key in manifest and not isinstance(manifest[key], kind):
            raise bad(f"has a {key} that is not a {kind.__name__}")
    return manifest


def read_manifest(store: ArtifactStore, ref: ModelRef) -> dict[str, Any]:
    where = f"{store.uri(ref.prefix)}/{MANIFEST}"
    try:
        manifest = json.loads(store.get_bytes(f"{ref.prefix}/{MANIFEST}"))
    except (ValueError, UnicodeDecodeError) as err:
        raise IntegrityError(f"{where} is not valid JSON: {err}") from None
    return validate_manifest(manifest, where, ref.model_id)


def list_models_report(store: ArtifactStore) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(the models, oldest first; the folders skipped as broken, each {"model", "uri", "error"}).

    One bad folder (a manifest that is not JSON, lacks a field, lists no files) is reported, not fatal: the
    rest of the store stays listable, and retrain's champion choice looks past it.
    """
    from trainkite.store import StoreError

    out, broken = [], []
    for name in store.list_dirs(""):
        if name.startswith("_"):
            continue
        for model_id in store.list_dirs(name):
            if not store.exists(f"{name}/{model_id}/{MANIFEST}"):
                continue
            try:
                validate_model_id(model_id)
                out.append(read_manifest(store, ModelRef(name, model_id)))
            except (IntegrityError, StoreError, UserInputError) as err:
                broken.append(
                    {"model": f"{name}/{model_id}", "uri": store.uri(f"{name}/{model_id}"), "error": str(err)}
                )
                log.warning("skipping %s/%s: %s", name, model_id, err)
    return sorted(out, key=lambda m: str(m.get("created_at", ""))), broken


def list_models(store: ArtifactStore) -> list[dict[str, Any]]:
    return list_models_report(store)[0]


def verify_dir(folder: Path, manifest: dict[str, Any], may_be_absent: tuple[str, ...] = ()) -> None:
    """Every file the manifest lists exists inside `folder` with its sha256; the first mismatch is named.

    Files under `may_be_absent` prefixes may be missing (a serving archive leaves the training data
    out), but one that is present must still match.
    """
    validate_manifest(manifest, f"{folder}/{MANIFEST}")
    base = folder.resolve()
    for rel, meta in sorted(manifest["files"].items()):
        path = folder / rel
        if not path.is_file():
            if rel.startswith(may_be_absent):
                continue
            raise IntegrityError(f"model {manifest.get('model_id')}: {rel} is missing")
        if not path.resolve().is_relative_to(base):
            # A link out of the folder: the hash would vouch for a file that is not the model's.
            raise IntegrityError(
                f"model {manifest.get('model_id')}: {rel} points outside the model folder; refusing to load it"
            )
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
                for rel in manifest["files"]:
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
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise IntegrityError(f"{path} is not valid JSON: {err}") from None
    validate_manifest(manifest, str(path))
    verify_dir(folder, manifest, may_be_absent=NOT_SERVED)
    return manifest


def recorded_schemas(manifest: dict[str, Any]) -> dict[str, int]:
    """The snapshot and feature schema versions a model was made with (1 for models older than the field)."""
    recorded = (manifest.get("lineage") or {}).get("data", {}).get(SCHEMAS_FIELD) or {}
    return {"snapshot": int(recorded.get("snapshot", 1)), "features": int(recorded.get("features", 1))}
