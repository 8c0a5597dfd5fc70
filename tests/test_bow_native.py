"""train.kernel = "native": bow's CPU update as one compiled loop per batch (models/bow_native.py) does what the
torch step does, reproduces itself bit for bit, and a model keeps the kernel that trained it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import registry as model_types
from models.bow import BowTrainer
from models.fit import make_deterministic
from tasks import data
from tasks.verify import verify_model, with_keys_added_later
from tests.test_scale import _params, _table, generated_rows
from trainkite.manifest import ModelRef
from trainkite.store import LocalStore, open_store

REPO = Path(__file__).resolve().parent.parent


def _ragged(rng, n: int, buckets: int, max_len: int):
    """Texts of 0..max_len ids (empty bags and repeated ids included), as the feature cache stores them."""
    lengths = rng.integers(0, max_len, n)
    lengths[:5] = 0
    ids = rng.integers(0, buckets, int(lengths.sum())).astype(np.int32)
    ids[10:20] = ids[10]  # one id many times in a text and across texts
    offsets = np.zeros(n, np.int64)
    offsets[1:] = np.cumsum(lengths)[:-1]
    return ids, offsets


def _trainer(params_factory, arrays, labels, kernel: str, **train):
    p = params_factory(
        **{
            "preprocess.buckets": 4096,
            "train.kernel": kernel,
            "train.batch_size": 64,
            "train.learning_rate": 0.5,
            **{f"train.{k}": v for k, v in train.items()},
        }
    )
    return BowTrainer(p, arrays, labels, "cpu", make_deterministic(p.train.seed, 1, "cpu"))


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_the_native_step_is_the_torch_step(params_factory, weight_decay):
    rng = np.random.default_rng(7)
    ids, offsets = _ragged(rng, 3_000, 4096, 40)
    arrays = {"train_ids": ids, "train_offsets": offsets, "train_y": rng.integers(0, 3, 3_000).astype(np.int64)}
    native, torch_ = (
        _trainer(params_factory, arrays, ["a", "b", "c"], k, weight_decay=weight_decay) for k in ("native", "torch")
    )
    assert native.native is not None and torch_.native is None
    start = {k: v.clone() for k, v in torch_.model.state_dict().items()}
    for step in range(40):
        rows = rng.permutation(3_000)[:64]
        if step == 0:
            rows[:5] = np.arange(5)  # the empty bags in a batch
        lr = 0.5 * (1 - step / 40)
        assert native.step(rows, lr) == pytest.approx(torch_.step(rows, lr), rel=1e-5)
    a, b = native.model.state_dict(), torch_.model.state_dict()
    for name in b:
        moved = float((b[name] - start[name]).abs().max())
        assert moved > 1e-3, name  # every tensor trained, far beyond the tolerance below
        assert float((a[name] - b[name]).abs().max()) <= 1e-6, name


def test_the_native_kernel_is_the_default_and_older_models_keep_torch(params_factory):
    assert params_factory().train.kernel == "native"
    assert with_keys_added_later({"train": {"epochs": 3}})["train"]["kernel"] == "torch"
    assert with_keys_added_later({"train": {"kernel": "native"}})["train"]["kernel"] == "native"


def test_a_native_training_learns_as_torch_does_and_repeats_bit_for_bit(params_factory, tmp_path):
    folder = _table(tmp_path / "src", generated_rows(6_000))
    shas, accs = {}, {}
    for name, kernel, threads in [("native", "native", 1), ("again", "native", 2), ("torch", "torch", 1)]:
        p = _params(
            params_factory,
            folder,
            **{"train.epochs": 3, "train.batch_size": 64, "train.kernel": kernel, "train.threads": threads},
        )
        work = tmp_path / name
        ds = data.fetch_dataset(p, work)
        store = LocalStore(tmp_path / f"store-{name}")
        feats = model_types.featurize(ds, p, store, work)
        trained = model_types.train(feats, p, store, ModelRef("sentiment", name), work)
        shas[name] = hashlib.sha256(Path(trained.weights_path).read_bytes()).hexdigest()
        accs[name] = trained.history[-1]["val_accuracy"]
    assert shas["native"] == shas["again"] != shas["torch"]
    assert accs["native"] > 0.75 and abs(accs["native"] - accs["torch"]) <= 0.03


def test_a_model_trained_by_the_torch_kernel_verifies_with_it(prefect_api, tk_home, params_factory):
    from flows.train import train

    train(params=params_factory(**{"train.kernel": "torch"}), model_id="torch-kernel-1")
    store = open_store()
    manifest = json.loads(store.get_bytes("sentiment/torch-kernel-1/manifest.json"))
    assert manifest["lineage"]["params"]["train"]["kernel"] == "torch"
    report = verify_model(store, "torch-kernel-1")
    assert report.ok and report.identical


def test_serving_and_prediction_never_load_numba():
    code = (
        "import sys\nimport serving.app, models.bow, models.lean_predictor, models.predictor\n"
        "print('numba' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
