"""Prove a model: rebuild it from its manifest alone and compare the weights tensor by tensor."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from params.model import Params, validate_params
from tasks import data
from models import registry
import models.features
import models.fit
from trainkite.errors import IntegrityError
from trainkite.lineage import git_info, package_versions
from trainkite.manifest import ModelRef, fetch_model, recorded_schemas
from trainkite.store import ArtifactStore, LocalStore


@dataclass
class VerifyReport:
    model_id: str
    identical: bool
    mode: str  # "bit-identical" | "tolerance"
    equal_within_tolerance: bool
    tensors: dict[str, dict] = field(default_factory=dict)
    lineage_changes: dict[str, dict] = field(default_factory=dict)
    params_changes: dict[str, dict] = field(default_factory=dict)
    data_check: str = ""

    @property
    def ok(self) -> bool:
        return self.identical if self.mode == "bit-identical" else self.equal_within_tolerance


def _flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff_params(recorded: dict, other: dict) -> dict[str, dict]:
    a, b = _flatten(recorded), _flatten(other)
    return {k: {"manifest": a.get(k), "params.json": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def lineage_changes(manifest: dict, device: str) -> dict[str, dict]:
    lin = manifest["lineage"]
    changes: dict[str, dict] = {}
    now_git = git_info()
    if lin.get("git", {}).get("commit") != now_git["commit"]:
        changes["commit"] = {"model": lin.get("git", {}).get("commit"), "now": now_git["commit"]}
    now_pk = package_versions()
    for name, version in sorted(lin.get("packages", {}).items()):
        if now_pk.get(name) != version:
            changes[f"packages.{name}"] = {"model": version, "now": now_pk.get(name)}
    if lin.get("device") != device:
        changes["device"] = {"model": lin.get("device"), "now": device}
    now_schemas = models.features.schemas(manifest.get("model_type", "bow"))
    for name, version in recorded_schemas(manifest).items():
        if version != now_schemas[name]:
            # Not a failure by itself: the rebuild uses the model's own schema where this code still has it.
            changes[f"schema.{name}"] = {"model": version, "now": now_schemas[name]}
    return changes


def rows_for_rebuild(folder: Path, manifest: dict, params: Params, workdir: Path) -> tuple[data.DatasetRef, str]:
    """The exact rows: the stored snapshot, or the query re-run when the model kept only a fingerprint."""
    lin = manifest["lineage"]["data"]
    expected = lin["fingerprint"]
    snap = folder / "data" / "snapshot.parquet"
    schema = recorded_schemas(manifest)["snapshot"]
    if snap.is_file():
        how = "snapshot"
        path = snap  # written in the model's own schema's order
    else:
        how = "query re-run"
        # Fetched today in this code's order; an older model trained on its rows in its own schema's order.
        path = data.in_schema_order(data.fetch_dataset(params, workdir).snapshot_path, schema, workdir)
    got = data.snapshot_fingerprint(path, schema=schema)
    if got != expected:
        raise IntegrityError(
            f"model {manifest['model_id']}: the data ({how}) no longer matches its fingerprint "
            f"({got[:12]}… != {expected[:12]}…); refusing to rebuild from different rows"
        )
    ref = data.DatasetRef(
        snapshot_path=str(path),
        fingerprint=expected,
        labels=manifest["labels"],
        counts=lin.get("counts", {}),
        source=lin.get("source", "local"),
        query=lin.get("query", ""),
    )
    return ref, f"{how}: fingerprint {expected[:12]}… matches"


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    # A truncated or foreign file (its manifest hash forged to match) is refused by name, as predict does.
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise IntegrityError(
            f"{path.name} is not a readable safetensors file ({str(err)[:200]}); it cannot be compared"
        ) from None


def compare_weights(a: Path, b: Path, tolerance: float | None) -> tuple[bool, bool, dict[str, dict]]:
    ta, tb = _load_weights(a), _load_weights(b)
    tensors: dict[str, dict] = {}
    identical, close = True, True
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb or ta[name].shape != tb[name].shape:
            tensors[name] = {"equal": False, "reason": "missing or different shape"}
            identical = close = False
            continue
        same = torch.equal(ta[name], tb[name])
        diff = float((ta[name].float() - tb[name].float()).abs().max()) if not same else 0.0
        ok = same or (tolerance is not None and diff <= tolerance)
        tensors[name] = {"equal": same, "max_abs_diff": diff}
        identical &= same
        close &= ok
    return identical, close, tensors


def verify_model(store: ArtifactStore, model_id: str, tolerance: float = 1e-4) -> VerifyReport:
    folder, manifest = fetch_model(store, model_id)  # hashes first: a tampered file stops here
    return verify_fetched(folder, manifest, model_id, tolerance)


# What a model trained before a key existed was trained with.
KEYS_ADDED_LATER = {"refit": False, "shuffle": "rows", "kernel": "torch"}


def with_keys_added_later(recorded: dict) -> dict:
    """A model's recorded parameters, with each train key added since filled in as it then trained."""
    train = recorded.get("train", {})
    return {**recorded, "train": {**KEYS_ADDED_LATER, **train}}


def verify_fetched(folder: Path, manifest: dict, model_id: str, tolerance: float = 1e-4) -> VerifyReport:
    """Rebuild the model in `folder` (as `fetch_model` returns it: hashes verified) and compare its weights."""
    _load_weights(folder / "weights.safetensors")  # readable before minutes of rebuilding
    recorded = manifest["lineage"].get("params")
    stored = json.loads((folder / "params.json").read_text())
    if recorded is None:
        recorded = stored
    params_changes = diff_params(recorded, stored)
    params = validate_params(with_keys_added_later(recorded), source=f"manifest of {model_id}")
    device = models.fit.pick_device("cpu")
    params = params.model_copy(update={"train": params.train.model_copy(update={"device": device})})
    work = Path(tempfile.mkdtemp(prefix=f"verify-{model_id}-"))
    try:
        dataset, data_check = rows_for_rebuild(folder, manifest, params, work)
        scratch = LocalStore(work / "store")
        # An older model's feature schema: its own featurizer (kept for serving) rebuilds its features.
        features = registry.featurize(dataset, params, scratch, work, recorded_schemas(manifest)["features"])
        trained = registry.train(features, params, scratch, ModelRef(params.model.name, model_id), work)
        gpu_model = manifest["lineage"].get("device") == "cuda"
        identical, close, tensors = compare_weights(
            folder / "weights.safetensors", Path(trained.weights_path), tolerance if gpu_model else None
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return VerifyReport(
        model_id=model_id,
        identical=identical,
        mode="tolerance" if gpu_model else "bit-identical",
        equal_within_tolerance=close,
        tensors=tensors,
        lineage_changes=lineage_changes(manifest, device),
        params_changes=params_changes,
        data_check=data_check,
    )
