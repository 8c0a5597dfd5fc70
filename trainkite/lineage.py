"""Facts about where a model came from: build, commit, packages, code version."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from trainkite.home import REPO_ROOT

_PACKAGES = (
    "trainkite",
    "torch",
    "numpy",
    "safetensors",
    "prefect",
    "duckdb",
    "pandas",
    "pyarrow",
    "wandb",
    "pydantic",
)
# Source whose change must invalidate cached steps and shows up in lineage.
_TRAINING_CODE = (
    "params/model.py",
    "tasks/data.py",
    "models/features.py",
    "models/bow.py",
    "models/fit.py",
    "models/metrics.py",
    "tasks/evaluate.py",
    "models/registry.py",
    "models/encoder.py",
    "tasks/publish.py",
    "trainkite/store.py",
    "trainkite/runfiles.py",
    "trainkite/snapshot.py",
)


def git_output(*args: str, cwd: str | Path = REPO_ROOT, timeout: float = 10) -> str | None:
    """What `git <args>` printed in `cwd` (this code's checkout by default), or None where git fails."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info() -> dict[str, object]:
    commit = git_output("rev-parse", "HEAD")
    if commit is None:
        # Inside an image there is no .git: the image build bakes the commit in (GIT_COMMIT build arg).
        # Never BUILDKITE_COMMIT: that is the commit the build asked for, not the one this code is.
        return {
            "commit": os.environ.get("TRAINKITE_GIT_COMMIT") or "unknown",
            "dirty": None,
            "branch": os.environ.get("BUILDKITE_BRANCH"),
        }
    status = git_output("--no-optional-locks", "status", "--porcelain", "--untracked-files=no") or ""
    return {"commit": commit, "dirty": bool(status), "branch": git_output("rev-parse", "--abbrev-ref", "HEAD")}


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


@functools.cache
def code_version() -> str:
    """sha256 over the source that decides a model's bytes: a change there invalidates cached steps.

    Only the training path counts, so editing (say) the deploy flow does not retrain anything. Computed
    once per process: it describes the code this process imported, and every cache key asks for it.
    """
    h = hashlib.sha256()
    for rel in _TRAINING_CODE:
        path = REPO_ROOT / rel
        if path.is_file():
            h.update(rel.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def docker_image() -> str | None:
    return os.environ.get("TRAINKITE_DOCKER_IMAGE")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
