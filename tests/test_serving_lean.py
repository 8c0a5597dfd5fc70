"""Serving without torch: bow in numpy gives torch's answers, and the serving app loads no torch for it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures_models import trained_model_dir  # noqa: F401
from trainkite.manifest import load_dir_manifest

REPO = Path(__file__).resolve().parent.parent
TEXTS = [
    "The pay is awful and management ignores us.",
    "I love my team and the flexible hours!",
    "",
    "?",
    "Pay is fine but my manager never listens",
    "ok " * 400,
    "Café crème — naïve résumé 🙂",
]


def test_bag_means_match_embedding_bag_including_empty_texts():
    import torch

    from models.lean_predictor import bag_means

    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    # texts of length 3, 0, 0, 5, 1, 0 (empty ones in the middle and at the end)
    lengths = [3, 0, 0, 5, 1, 0]
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
    ids = rng.integers(0, 50, sum(lengths)).astype(np.int64)
    bag = torch.nn.EmbeddingBag(50, 8, mode="mean", _weight=torch.from_numpy(table))
    want = bag(torch.from_numpy(ids), torch.from_numpy(offsets)).detach().numpy()
    got = bag_means(table, ids, offsets)
    assert np.allclose(got, want, atol=1e-6) and not got[1].any() and not got[5].any()
    assert bag_means(table, np.zeros(0, dtype=np.int64), np.zeros(3, dtype=np.int64)).shape == (3, 8)


def test_numpy_bow_gives_torchs_answers(trained_model_dir):  # noqa: F811
    from models.lean_predictor import LeanPredictor, load_predictor
    from models.predictor import Predictor

    manifest = load_dir_manifest(trained_model_dir)
    lean, reference = LeanPredictor(trained_model_dir, manifest), Predictor(trained_model_dir, manifest)
    assert lean.backend == "numpy" and load_predictor(trained_model_dir, manifest).backend == "numpy"
    assert load_predictor(trained_model_dir, manifest, backend="torch").backend == "torch"
    a, b = lean.predict_proba(TEXTS), reference.predict_proba(TEXTS)
    assert a.shape == b.shape and float(np.abs(a - b).max()) < 1e-5
    assert [p["label"] for p in lean.predict(TEXTS)] == [p["label"] for p in reference.predict(TEXTS)]
    assert all(p["model_id"] == "base-1" for p in lean.predict(TEXTS))
    assert manifest["serving"] == {"backend": "numpy"}


def test_serving_a_bow_model_imports_no_torch(trained_model_dir):  # noqa: F811
    """What the lean image relies on: the app, the predictor and the featurizer stay off torch/transformers."""
    code = f"""
import json, sys, time
from starlette.testclient import TestClient
from serving.app import create_app
app = create_app(model_dir={str(trained_model_dir)!r})
with TestClient(app) as client:
    deadline = time.monotonic() + 60
    while client.get("/ping").status_code != 200:
        assert time.monotonic() < deadline and app.state.model.status != "failed", app.state.model.error
        time.sleep(0.02)
    body = client.post("/invocations", json={{"instances": ["great pay"]}}).json()
heavy = sorted(m for m in ("torch", "transformers", "prefect", "wandb", "awswrangler", "duckdb") if m in sys.modules)
print(json.dumps({{"heavy": heavy, "body": body}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [], out
    assert out["body"]["model_id"] == "base-1" and out["body"]["predictions"][0]["model_id"] == "base-1"


def test_unknown_backend_is_refused_naming_the_variable(monkeypatch, trained_model_dir):  # noqa: F811
    from models.lean_predictor import load_predictor
    from trainkite.errors import UserInputError

    monkeypatch.setenv("TRAINKITE_SERVE_BACKEND", "tensorflow")
    with pytest.raises(UserInputError, match="TRAINKITE_SERVE_BACKEND='tensorflow'"):
        load_predictor(trained_model_dir, json.loads((trained_model_dir / "manifest.json").read_text()))
