"""train.checkpoint_interval_s: a run of short epochs checkpoints at most once per interval (and always at its
last epoch), with the same weights as a run that checkpoints every epoch."""

from __future__ import annotations

import hashlib
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
