"""train.checkpoint_interval_s: a run of short epochs checkpoints at most once per interval (and always at its
last epoch), with the same weights as a run that checkpoints every epoch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from models import fit
from models import registry as model_types
from tasks import data
from trainkite.manifest import ModelRef
from trainkite.runfiles import checkpoint_key
from trainkite.store import LocalStore


@pytest.mark.parametrize(("interval", "saved"), [(0, [1, 2, 3]), (3600, [3])])
def test_checkpoints_follow_the_interval_and_the_weights_do_not(
    params_factory, demo_data, tmp_path, monkeypatch, interval, saved
):
    epochs: list[int] = []
    real = fit.save_checkpoint

    def recording(store, ref, workdir, model, best, state, optimizer=None):
        epochs.append(state["epoch"])
        return real(store, ref, workdir, model, best, state, optimizer)

    monkeypatch.setattr(fit, "save_checkpoint", recording)
    shas = []
    for name, value in (("asked", interval), ("every-epoch", 0)):
        p = params_factory(**{"data.path": str(demo_data), "train.checkpoint_interval_s": value, "train.patience": 0})
        work = tmp_path / name
        ds = data.fetch_dataset(p, work)
        store = LocalStore(tmp_path / f"store-{name}")
        feats = model_types.featurize(ds, p, store, work)
        trained = model_types.train(feats, p, store, ModelRef("sentiment", name), work)
        shas.append(hashlib.sha256(Path(trained.weights_path).read_bytes()).hexdigest())
        if name == "asked":
            assert epochs == saved
            assert store.exists(checkpoint_key(ModelRef("sentiment", name).prefix, "last.json"))
    assert shas[0] == shas[1]


def test_the_shipped_interval_is_30_seconds(params_factory):
    from params import load_params
    from params.model import DEFAULT_PARAMS_FILE

    assert load_params(DEFAULT_PARAMS_FILE).train.checkpoint_interval_s == 30
    assert params_factory().train.checkpoint_interval_s == 0  # the tests' resumes need every epoch's


class Killed(Exception):
    pass


def test_a_kill_between_a_checkpoints_weights_and_its_state_resumes_to_the_same_weights(
    params_factory, demo_data, tmp_path
):
    """The weights file is written before the state file; a process killed in between leaves epoch 2's weights
    beside epoch 1's state. The resume must take the state the weights were written with."""
    p = params_factory(**{"data.path": str(demo_data), "train.patience": 0})
    ds = data.fetch_dataset(p, tmp_path / "wd")

    def run(name: str, store: LocalStore, workdir: Path) -> str:
        feats = model_types.featurize(ds, p, store, workdir)
        trained = model_types.train(feats, p, store, ModelRef("sentiment", name), workdir)
        return hashlib.sha256(Path(trained.weights_path).read_bytes()).hexdigest()

    clean = run("torn", LocalStore(tmp_path / "clean"), tmp_path / "w-clean")
    store = LocalStore(tmp_path / "store")
    put_bytes, states = store.put_bytes, []

    def dies_before_the_second_state(data_, key):
        if key.endswith("checkpoints/last.json"):
            states.append(key)
            if len(states) == 2:
                raise Killed
        return put_bytes(data_, key)

    store.put_bytes = dies_before_the_second_state
    with pytest.raises(Killed):
        run("torn", store, tmp_path / "w1")
    store.put_bytes = put_bytes
    ck = checkpoint_key(ModelRef("sentiment", "torn").prefix, "last.json")
    assert json.loads(store.get_bytes(ck))["epoch"] == 1  # the state file lags the weights written after it
    assert run("torn", store, tmp_path / "w2") == clean
