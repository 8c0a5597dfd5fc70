"""The store under broken folders, bad manifests, a full disk and paths that are files.

A manifest is the model's proof: one that cannot prove every file (no `files`, an entry without sha256,
a path out of the folder) is refused, and one broken folder never takes the listing down with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures_models import trained_model_dir  # noqa: F401
from trainkite import manifest as mf
from trainkite.errors import IntegrityError, UserInputError
from trainkite.store import LocalStore, StoreError


def _publish(store: LocalStore, tmp_path: Path, model_id: str) -> dict:
    w = tmp_path / f"{model_id}.bin"
    w.write_bytes(b"weights " + model_id.encode())
    return mf.publish(store, mf.ModelRef("sentiment", model_id), {"weights.safetensors": w}, {"lineage": {}})


def _break(store: LocalStore, model_id: str, edit) -> None:
    path = store.local_path(f"sentiment/{model_id}/manifest.json")
    m = json.loads(path.read_text())
    path.write_text(json.dumps(edit(m)))


def _without(key):
    def edit(m):
        m.pop(key)
        return m

    return edit


BROKEN = {
    "a-list": (lambda m: [], "is a JSON list, not an object"),
    "no-model-id": (_without("model_id"), "has no model_id"),
    "other-model-id": (lambda m: {**m, "model_id": "someone-else"}, "names model 'someone-else'"),
    "no-sha256": (lambda m: {**m, "files": {"weights.safetensors": {"size": 3}}}, "no valid sha256 for weights"),
    "no-files": (_without("files"), "lists no files"),
    "empty-files": (lambda m: {**m, "files": {}}, "lists no files"),
    "traversal": (
        lambda m: {**m, "files": {**m["files"], "../../etc/hostname": {"sha256": "0" * 64}}},
        "'../../etc/hostname', which is not a plain path inside the model folder",
    ),
    "absolute": (lambda m: {**m, "files": {"/etc/hostname": {"sha256": "0" * 64}}}, "not a plain path"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_manifest_that_cannot_prove_its_files_is_refused(case, tmp_path, tk_home):
    store = LocalStore(tmp_path / "store")
    _publish(store, tmp_path, "good-1")
    _publish(store, tmp_path, "bad-1")
    edit, message = BROKEN[case]
    _break(store, "bad-1", edit)
    with pytest.raises(IntegrityError, match="cannot be verified") as err:
        mf.fetch_model(store, "bad-1")
    assert message in str(err.value)
    # The listing (`trainkite models`, retrain's champion) skips it, says why, and still lists the good one.
    models, broken = mf.list_models_report(store)
    assert [m["model_id"] for m in models] == ["good-1"]
    assert [b["model"] for b in broken] == ["sentiment/bad-1"] and message in broken[0]["error"]
    assert [m["model_id"] for m in mf.list_models(store)] == ["good-1"]


def test_not_json_is_reported_and_skipped(tmp_path, tk_home):
    store = LocalStore(tmp_path / "store")
    _publish(store, tmp_path, "good-1")
    _publish(store, tmp_path, "bad-1")
    store.local_path("sentiment/bad-1/manifest.json").write_text("{not json")
    models, broken = mf.list_models_report(store)
    assert [m["model_id"] for m in models] == ["good-1"] and "not valid JSON" in broken[0]["error"]


def test_a_file_linked_out_of_the_model_folder_is_not_hashed(tmp_path, tk_home):
    store = LocalStore(tmp_path / "store")
    _publish(store, tmp_path, "m-1")
    outside = tmp_path / "outside.bin"
    weights = store.local_path("sentiment/m-1/weights.safetensors")
    outside.write_bytes(weights.read_bytes())
    weights.unlink()
    weights.symlink_to(outside)
    with pytest.raises(IntegrityError, match="weights.safetensors points outside the model folder"):
        mf.fetch_model(store, "m-1")


def test_load_dir_manifest_validates_too(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"model_id": "m-1", "model_name": "s"}))
    with pytest.raises(IntegrityError, match="lists no files"):
        mf.load_dir_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(IntegrityError, match="is a JSON list"):
        mf.load_dir_manifest(tmp_path)


def test_paths_that_are_files_are_refused_by_name(tmp_path, monkeypatch):
    f = tmp_path / "a-file"
    f.write_text("x")
    with pytest.raises(UserInputError, match="artifact root .*a-file' is a file, not a folder"):
        LocalStore(f)
    monkeypatch.setenv("TRAINKITE_HOME", str(f))
    from trainkite.home import home

    with pytest.raises(UserInputError, match="TRAINKITE_HOME=.*a-file' is a file, not a folder"):
        home()


# A file-size limit (ulimit -f) fails writes with EFBIG exactly where a full disk fails them with ENOSPC: the
# same OSError path through every write, without root or a tiny file system.
_FULL_DISK = r"""
import json, resource, sys
from pathlib import Path
from trainkite import manifest as mf
from trainkite.store import LocalStore, StoreError
root, big = Path(sys.argv[1]), Path(sys.argv[2])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    mf.publish(LocalStore(root), mf.ModelRef("sentiment", "full-1"), {"weights.safetensors": big}, {})
except StoreError as e:
    print(json.dumps({"error": str(e)}))
"""


def test_a_full_disk_during_publish_is_one_clear_error_and_no_manifest(tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 * 1024))
    root = tmp_path / "store"
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(root), str(big)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    error = json.loads(out.stdout)["error"]
    assert "write " in error and "weights.safetensors" in error and "File too large" in error, error
    files = [p.name for p in root.rglob("*") if p.is_file()]
    assert "manifest.json" not in files and not [n for n in files if n.endswith(".part")], files
    assert mf.list_models(LocalStore(root)) == []


def test_store_error_names_the_advice():
    import errno

    from trainkite.store import disk_error

    e = disk_error("write x", OSError(errno.ENOSPC, "No space left on device", "/s/x"))
    assert isinstance(e, StoreError) and "No space left on device (/s/x); the disk is full" in str(e)


# Runs inside its own mount namespace (`unshare -m`): a tmpfs holding a copy of a store, remounted read-only,
# so permission bits cannot be bypassed by root; nothing of it outlives the namespace.
_READ_ONLY = r"""
import json, shutil, subprocess, sys
store, mount, model_id, *train = sys.argv[1:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mount], check=True)
shutil.copytree(store, mount, dirs_exist_ok=True)
subprocess.run(["mount", "-o", "remount,ro", mount], check=True)
def cli(*args):
    p = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)
    return {"rc": p.returncode, "out": p.stdout, "err": p.stderr}
print(json.dumps({
    "models": cli("models", "--root", mount, "--json"),
    "predict": cli("predict", model_id, "--root", mount, "--text", "the pay is fair", "--json"),
    "verify": cli("verify", model_id, "--root", mount, "--json"),
    "train": cli("train", *train, "--set", f"artifacts.root={json.dumps(mount)}", "--model-id", "ro-2", "--json"),
}))
"""


def test_a_read_only_store_serves_its_models_and_refuses_a_training_by_name(trained_model_dir, tmp_path):  # noqa: F811
    from tests.buildkite_e2e_helpers import SMALL

    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"needs a private mount namespace (unshare -m as root): {probe.stderr.decode().strip()}")
    mount = tmp_path / "ro"
    mount.mkdir()
    train = [a for o in SMALL for a in ("--set", o)]
    out = subprocess.run(
        [
            "unshare",
            "-m",
            sys.executable,
            "-c",
            _READ_ONLY,
            str(trained_model_dir.parent.parent),
            str(mount),
            "base-1",
            *train,
        ],
        cwd=REPO,
        env={**os.environ, "TRAINKITE_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout)
    assert r["models"]["rc"] == 0 and [m["model_id"] for m in json.loads(r["models"]["out"])["models"]] == ["base-1"]
    assert r["predict"]["rc"] == 0, r["predict"]["err"][-2000:]
    assert json.loads(r["predict"]["out"])["predictions"][0]["model_id"] == "base-1"
    assert r["verify"]["rc"] == 0, r["verify"]["err"][-2000:]
    train_out = r["train"]
    assert train_out["rc"] == 1, train_out["err"][-3000:]
    error = json.loads(train_out["out"])["error"]
    assert "Read-only file system" in error and str(mount) in error and "writable artifacts.root" in error, error
    assert "Traceback" not in train_out["err"]
