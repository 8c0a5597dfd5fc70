"""verify, lineage, resume after a crash: reproducibility proven, not claimed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainkite.store import open_store

SMALL = ["--set", "preprocess.buckets=4096", "--set", "model.embedding_dim=16", "--set", "tracking.backend='none'"]


def tk(*args, env, check=True, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **env},
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return {"TRAINKITE_HOME": str(tmp_path_factory.mktemp("repro-home"))}


@pytest.fixture(scope="module")
def model(prefect_api, home):
    out = tk("train", *SMALL, "--set", "train.epochs=3", "--model-id", "repro-1", "--json", env=home)
    return json.loads(out.stdout)["model_id"]


def _manifest_path(home, model_id):
    return os.path.join(home["TRAINKITE_HOME"], "artifacts", "sentiment", model_id, "manifest.json")


def test_verify_is_bit_identical(model, home):
    out = tk("verify", model, "--json", env=home)
    r = json.loads(out.stdout)
    assert r["ok"] and r["identical"] and r["mode"] == "bit-identical" and not r["params_changes"]
    assert "snapshot" in r["data"]


def test_changed_param_in_manifest_is_named(model, home, tmp_path):
    import shutil

    path = _manifest_path(home, model)
    backup = tmp_path / "manifest.json"
    shutil.copy(path, backup)
    try:
        m = json.loads(Path(path).read_text())
        m["lineage"]["params"]["train"]["learning_rate"] = 0.25
        Path(path).write_text(json.dumps(m))
        out = tk("verify", model, "--json", env=home, check=False)
        assert out.returncode == 1
        r = json.loads(out.stdout)
        assert "train.learning_rate" in r["params_changes"]
        assert not r["identical"] and r["differing_tensors"]
    finally:
        shutil.copy(backup, path)


def test_tampered_weight_byte_is_refused_at_load(model, home, tmp_path):
    import shutil

    weights = os.path.join(os.path.dirname(_manifest_path(home, model)), "weights.safetensors")
    backup = tmp_path / "w"
    shutil.copy(weights, backup)
    try:
        data = bytearray(Path(weights).read_bytes())
        data[-5] ^= 0xFF
        Path(weights).write_bytes(bytes(data))
        for cmd in (["verify", model], ["predict", model, "--text", "hello"]):
            out = tk(*cmd, env=home, check=False)
            assert out.returncode == 1 and "weights.safetensors does not match its sha256" in out.stderr
            assert "Traceback" not in out.stderr
    finally:
        shutil.copy(backup, weights)


def test_lineage_from_a_prediction(model, home, tmp_path):
    pred = json.loads(tk("predict", model, "--text", "Great manager", "--json", env=home).stdout)
    f = tmp_path / "pred.json"
    f.write_text(json.dumps(pred["predictions"][0]))
    lin = json.loads(tk("lineage", "--prediction", str(f), "--json", env=home).stdout)
    m = json.loads(Path(_manifest_path(home, model)).read_text())
    assert lin["model_id"] == model
    assert lin["params_hash"] == m["lineage"]["params_hash"]
    assert lin["data"]["fingerprint"] == m["lineage"]["data"]["fingerprint"]
    assert lin["git"]["commit"] == m["lineage"]["git"]["commit"] and lin["packages"]["torch"]
    human = tk("lineage", model, env=home).stdout
    assert model in human and "fingerprint" in human


def _task_states(flow_run_id):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}


def _latest_flow_run(model_id):
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as c:
        runs = c.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20)
    return next(r for r in runs if r.parameters.get("model_id") == model_id)


def test_sigkill_mid_epoch_then_rerun_resumes_to_the_same_weights(prefect_api, home, tmp_path):
    slow = [*SMALL, "--set", "train.epochs=12", "--set", "train.batch_size=1", "--set", "train.patience=0"]
    slow += ["--set", "train.checkpoint_interval_s=0"]  # a checkpoint every epoch
    env = {"TRAINKITE_HOME": str(tmp_path / "h")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", *slow, "--model-id", "crash-1", "--json"],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    state = tmp_path / "h" / "artifacts" / "_scratch" / "sentiment" / "crash-1" / "checkpoints" / "last.json"
    model_dir = tmp_path / "h" / "artifacts" / "sentiment" / "crash-1"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= 2:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at < 12
    assert not (model_dir / "manifest.json").exists()

    resumed = json.loads(tk("train", *slow, "--model-id", "crash-1", "--json", env=env).stdout)
    states = _task_states(_latest_flow_run("crash-1").id)
    assert states["fetch_data"] == "Cached" and states["preprocess"] == "Cached"
    assert states["train"] == "Completed"
    m = json.loads((model_dir / "manifest.json").read_text())
    assert not state.exists(), "the scratch the resume used is removed once the model is published"
    assert m["resumed_from_epoch"] >= killed_at

    clean = json.loads(tk("train", *slow, "--model-id", "clean-1", "--json", env=env).stdout)
    store = open_store(os.path.join(env["TRAINKITE_HOME"], "artifacts"))
    mc = json.loads(store.get_bytes("sentiment/clean-1/manifest.json"))
    assert m["files"]["weights.safetensors"]["sha256"] == mc["files"]["weights.safetensors"]["sha256"]
    assert resumed["model_id"] == "crash-1" and clean["model_id"] == "clean-1"


def test_a_rerun_after_the_store_was_emptied_recomputes_instead_of_reusing_keys_to_nothing(prefect_api, tmp_path):
    """Cache entries live in Prefect; the files they name live in the store. Emptying the store (or `trainkite gc`)
    and re-running a model ID must rebuild the steps, not fail on a cached snapshot key that no longer exists."""
    import shutil

    env = {"TRAINKITE_HOME": str(tmp_path / "h")}
    first = json.loads(tk("train", *SMALL, "--model-id", "gone-1", "--json", env=env).stdout)
    shutil.rmtree(tmp_path / "h" / "artifacts")

    again = json.loads(tk("train", *SMALL, "--model-id", "gone-1", "--json", env=env).stdout)
    states = _task_states(_latest_flow_run("gone-1").id)
    assert {states[s] for s in ("fetch_data", "preprocess", "train", "evaluate")} == {"Completed"}, states
    assert (tmp_path / "h" / "artifacts" / "sentiment" / "gone-1" / "manifest.json").is_file()
    assert again["metrics"] == first["metrics"]
