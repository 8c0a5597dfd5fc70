"""`model.tar.gz` for SageMaker: the model's files at the archive root, byte-identical for the same model.

SageMaker extracts the archive into /opt/ml/model as-is, so a wrapping folder would end up as
/opt/ml/model/<folder>/... and the container would find no manifest. Deterministic bytes (sorted
names, fixed mtime/owner/mode, no gzip timestamp) make the archive's sha256 a stable identity: a
re-deploy of the same model uploads the same object.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from trainkite.lineage import file_sha256
from trainkite.manifest import NOT_SERVED, MANIFEST, verify_dir

ARCHIVE_NAME = "model.tar.gz"


def archive_members(manifest: dict) -> list[str]:
    """What goes in: the files serving needs, and the manifest (the container verifies them). The training
    rows (`data/`) and plots stay in the artifact store: they must not land on an endpoint."""
    return sorted([*(f for f in manifest.get("files", {}) if not f.startswith(NOT_SERVED)), MANIFEST])


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_archive(folder: Path, manifest: dict, dest: Path) -> dict:
    """Verify `folder` against `manifest`, then write `dest`; returns its path, sha256 and size."""
    verify_dir(folder, manifest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel in archive_members(manifest):
            path = folder / rel
            with open(path, "rb") as f:
                tar.addfile(_tarinfo(rel, path.stat().st_size), f)
    tmp.replace(dest)
    return {"path": str(dest), "sha256": file_sha256(dest), "size": dest.stat().st_size}


def extract_archive(archive: Path, dest: Path) -> Path:
    """Unpack like SageMaker does into /opt/ml/model (tests and local checks); refuses unsafe members."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def list_archive(archive: Path | bytes) -> list[str]:
    fileobj = io.BytesIO(archive) if isinstance(archive, bytes) else None
    with tarfile.open(name=None if fileobj else archive, fileobj=fileobj, mode="r:gz") as tar:
        return tar.getnames()
