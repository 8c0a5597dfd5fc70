"""The W&B worker process (`tasks.wandb_worker`): a real child process and real wandb (offline), driven through
`tasks.track` as the train flow's track step drives it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import track
from tests.conftest import REPO
from tests.test_track_evidence import wandb_records


def _request(run_id: str, tmp_path: Path) -> dict:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"w" * 64)
    return {
        "init": {
            "project": "trainkite-test",
            "entity": None,
            "id": run_id,
            "name": run_id,
            "config": {"train": {"epochs": 2}},
            "job_type": "train",
            "tags": ["t"],
            "group": None,
        },
        "history": [[1, {"train_loss": 0.7}], [2, {"train_loss": 0.5}]],
        "summary": {"model_id": run_id},
        "confusion": {"key": "test_confusion", "title": "t", "labels": ["a", "b"], "y_true": [0, 1], "y_pred": [0, 0]},
        "dataset": None,
        "model": {
            "name": "model-x",
            "type": "model",
            "metadata": {},
            "refs": [[weights.as_uri(), "weights.bin", True]],
            "aliases": [run_id],
        },
    }


@pytest.fixture
def worker_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    (tmp_path / "wandb").mkdir()
    yield tmp_path
    if track._worker is not None:
        track._worker.close()
        track._worker = None


def test_the_worker_logs_a_whole_run_and_names_it(worker_env):
    reply = track._get_worker().request(_request("tw-1", worker_env))
    assert reply["ok"] and reply["run_id"] == "tw-1"
    run_dir = Path(reply["run_dir"])
    assert run_dir.parent.parent == worker_env / "wandb" and run_dir.name.endswith("-tw-1")
    records = wandb_records(run_dir / "run-tw-1.wandb")
    kinds = {r.WhichOneof("record_type") for r in records}
    assert {"run", "history", "summary", "artifact"} <= kinds
    (model,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"]
    assert [e.path for e in model.manifest.contents] == ["weights.bin"]


def test_a_refused_run_is_a_clear_error_and_the_worker_goes_on(worker_env):
    bad = _request("tw-2", worker_env)
    bad["model"]["name"] = "model/with/slashes"  # W&B refuses the artifact name
    with pytest.raises(track.TrackingError, match="model/with/slashes"):
        track._get_worker().request(bad)
    assert track._get_worker().request(_request("tw-3", worker_env))["run_id"] == "tw-3"


def test_a_worker_that_dies_is_reported_then_replaced(worker_env):
    worker = track._get_worker()
    worker.request(_request("tw-4", worker_env))
    worker.proc.kill()
    worker.proc.wait()
    with pytest.raises(track.TrackingError, match="worker exited"):
        worker.request(_request("tw-5", worker_env))
    fresh = track._get_worker()
    assert fresh is not worker and fresh.request(_request("tw-6", worker_env))["run_id"] == "tw-6"


def test_wandb_failing_to_start_names_the_cause(worker_env, monkeypatch):
    fake = worker_env / "fake"
    fake.mkdir()
    (fake / "wandb.py").write_text("raise RuntimeError('this wandb is broken')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    with pytest.raises(track.TrackingError, match="W&B could not start: RuntimeError: this wandb is broken"):
        track._get_worker().request(_request("tw-7", worker_env))


def test_a_changed_wandb_environment_gets_a_new_worker(worker_env, monkeypatch):
    first = track._get_worker()
    monkeypatch.setenv("WANDB_DIR", str(worker_env / "other"))
    (worker_env / "other").mkdir()
    second = track._get_worker()
    assert second is not first and first.proc.poll() is not None, "the old worker was closed"
    reply = second.request(_request("tw-8", worker_env))
    assert Path(reply["run_dir"]).parent.parent == worker_env / "other"


def test_the_training_process_never_imports_wandb(tmp_path):
    """The point of the worker: W&B's import (a second of bytecode under the GIL) runs in another process."""
    code = """
import json, sys
from tasks import track
req = json.loads(sys.argv[1])
reply = track._get_worker().request(req)
print(json.dumps({"run_id": reply["run_id"], "wandb_imported": "wandb" in sys.modules}))
"""
    (tmp_path / "wandb").mkdir()
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb")}
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(_request("tw-9", tmp_path))],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"run_id": "tw-9", "wandb_imported": False}
