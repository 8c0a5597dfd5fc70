"""A run's intermediate files, kept in the artifact store next to its checkpoints.

On ECS or Batch a re-run lands in a fresh container with an empty disk; keeping each step's
outputs under `<name>/<model-id>/run/` (outside the manifest, like `checkpoints/`) lets the
re-run reuse finished steps wherever it runs.
"""

from __future__ import annotations

from pathlib import Path

from trainkite.store import ArtifactStore


def run_key(prefix: str, name: str) -> str:
    return f"{prefix}/run/{name}"


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
    store.download(key, local)
    return local
