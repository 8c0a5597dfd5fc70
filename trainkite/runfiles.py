"""A run's intermediate files, kept in the artifact store next to its checkpoints.

On ECS or Batch a re-run lands in a fresh container with an empty disk; keeping each step's
outputs under `_scratch/<name>/<model-id>/run/` (its checkpoints under `.../checkpoints/`) lets
the re-run reuse finished steps wherever it runs. Scratch lives outside the published folder
`<name>/<model-id>/`, which holds exactly the manifest's files; it is removed once the model is
published (`remove_run_files`), kept after a failure for the resume, and `trainkite gc` removes
what no model needs any more.
"""

from __future__ import annotations

from pathlib import Path

from trainkite.errors import ModelIdTaken
from trainkite.store import ArtifactStore, StoreError


SCRATCH_ROOT = "_scratch"
# The staged output of each cached step, by name under `run/`: the step writes it, its cache entry points at it.
SNAPSHOT = "snapshot.parquet"
WEIGHTS = "weights.safetensors"
METRICS = "metrics.json"


def scratch_prefix(prefix: str) -> str:
    """`<name>/<model-id>` -> where that run's scratch lives in the store."""
    return f"{SCRATCH_ROOT}/{prefix}"


def run_key(prefix: str, name: str) -> str:
    return f"{scratch_prefix(prefix)}/run/{name}"


def checkpoint_key(prefix: str, name: str) -> str:
    return f"{scratch_prefix(prefix)}/checkpoints/{name}"


def remove_run_files(store: ArtifactStore, prefix: str, workdir: Path | None) -> dict:
    """Delete a run's scratch (staged files and checkpoints) and its local run folder."""
    import shutil

    keys = store.list(scratch_prefix(prefix))
    store.delete_prefix(scratch_prefix(prefix))
    local = workdir is not None and workdir.is_dir()
    if local:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"scratch_objects": len(keys), "workdir": str(workdir) if local else None}


def stage(store: ArtifactStore, local: Path, key: str) -> str:
    store.put_file(local, key)
    return key


def local_copy(store: ArtifactStore, key: str, local: Path) -> Path:
    """`local` if it is already there (same machine), else a fresh download of `key`."""
    if local.is_file():
        return local
    direct = store.local_path(key)
    if direct is not None and direct.is_file():
        return direct
    try:
        store.download(key, local)
    except StoreError:
        taken = _taken_meanwhile(store, key)
        if taken is None:
            raise
        raise taken from None
    return local


def _taken_meanwhile(store: ArtifactStore, key: str) -> ModelIdTaken | None:
    """When a run's scratch file is gone because another run of the same model ID published it (and removed
    the scratch they shared), the error that says so; None when the model is not published."""
    from trainkite.manifest import MANIFEST

    parts = key.split("/")
    if len(parts) < 4 or parts[0] != SCRATCH_ROOT:
        return None
    name, model_id = parts[1], parts[2]
    if not store.exists(f"{name}/{model_id}/{MANIFEST}"):
        return None
    return ModelIdTaken(
        f"model {model_id} was published at {store.uri(f'{name}/{model_id}')} by another run while this one ran "
        "(its files in the shared scratch are gone with it); a model ID is never reused (start a new build or run)"
    )


def garbage(store: ArtifactStore, runs: Path | None, unfinished: bool = False) -> dict[str, list[str]]:
    """What no model needs, as store prefixes and local folders: the scratch of published models, folders in
    a published model's folder that its manifest lists nothing in (the old layout kept checkpoints/ and
    run/ there), local run folders of published models. With `unfinished`, also the scratch and the run
    folder of runs that never published (they cannot be resumed after that)."""
    import json

    from trainkite.manifest import MANIFEST

    published: dict[str, str] = {}  # model ID -> its name
    prefixes: list[str] = []
    for name in store.list_dirs(""):
        if name.startswith("_"):
            continue
        for model_id in store.list_dirs(name):
            prefix = f"{name}/{model_id}"
            if not store.exists(f"{prefix}/{MANIFEST}"):
                continue  # being published, or never was: not ours to judge
            published[model_id] = name
            listed = json.loads(store.get_bytes(f"{prefix}/{MANIFEST}")).get("files", {})
            used = {rel.split("/", 1)[0] for rel in listed}
            prefixes += [f"{prefix}/{d}" for d in store.list_dirs(prefix) if d not in used]
    for name in store.list_dirs(SCRATCH_ROOT):
        for model_id in store.list_dirs(f"{SCRATCH_ROOT}/{name}"):
            if published.get(model_id) == name or unfinished:
                prefixes.append(f"{SCRATCH_ROOT}/{name}/{model_id}")
    local = []
    if runs is not None and runs.is_dir():
        local = [str(d) for d in sorted(runs.iterdir()) if d.is_dir() and (d.name in published or unfinished)]
    return {"prefixes": sorted(prefixes), "local": local}


def collect(store: ArtifactStore, found: dict[str, list[str]]) -> int:
    """Remove what `garbage` found; the number of store objects removed."""
    import shutil

    removed = 0
    for prefix in found["prefixes"]:
        removed += len(store.list(prefix))
        store.delete_prefix(prefix)
    for folder in found["local"]:
        shutil.rmtree(folder, ignore_errors=True)
    return removed
