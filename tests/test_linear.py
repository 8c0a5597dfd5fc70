"""model.type = "linear": TF-IDF of bow's hashed n-grams + logistic regression, fitted to its optimum. Its transform is
scikit-learn's TfidfVectorizer's, the fit reproduces itself bit for bit, the published model scores texts as the
training scored them (in numpy, without torch or scikit-learn), and the data decides when it is the default."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import linear
from models import registry as model_types
from models.features import encode, load_features
from tasks import data, defaults
from tasks.verify import verify_model
from tests.test_refit import _stats
from tests.test_scale import _params, _table, generated_rows
from trainkite.manifest import ModelRef
from trainkite.store import LocalStore, open_store

REPO = Path(__file__).resolve().parent.parent


def test_small_data_resolves_to_linear_large_data_and_epoch_keys_to_bow():
    from params import load_params

    shipped = load_params(None, [])
    assert shipped.model.type is None  # the shipped file leaves it to the data
    resolved = lambda p, st: defaults.resolve_params(p, st)[0].model.type  # noqa: E731
    small, large = _stats(50_000), _stats(1_000_000)
    assert defaults.linear_ids(shipped, small) <= defaults.LINEAR_MAX_IDS < defaults.linear_ids(shipped, large)
    assert resolved(shipped, small) == "linear"
    assert resolved(shipped, large) == "bow"
    # Short texts: more rows fit under the same matrix size.
    assert resolved(shipped, _stats(1_000_000, mean_tokens=1.0)) == "linear"
    # A key only an epoch-trained model reads asks for bow; a set type always wins.
    for key in defaults.EPOCH_KEYS:
        value = {"model.embedding_dim": 16, "train.learning_rate": 0.1}.get(key, 3)
        assert resolved(load_params(None, [f"{key}={value}"]), small) == "bow", key
    assert resolved(load_params(None, ["model.type='bow'"]), small) == "bow"
    assert resolved(load_params(None, ["model.type='linear'"]), large) == "linear"
    _, table = defaults.resolve_params(shipped, small)
    assert table["model.type"] == {"value": "linear", "source": "data"}


def test_a_linear_fit_that_would_not_fit_in_memory_is_refused_by_name():
    from params import ParamsError, load_params

    huge = _stats(20_000_000)
    with pytest.raises(ParamsError, match=r"model.type = 'linear' holds its whole TF-IDF matrix.*memory_limit_gib = 8"):
        defaults.resolve_params(load_params(None, ["model.type='linear'"]), huge)
    # Pinned all the way (nothing left to resolve) it is refused too; with the memory, or as bow, it is not.
    pinned = load_params(
        None,
        [
            "model.type='linear'",
            "preprocess.buckets=1024",
            "model.embedding_dim=16",
            "train.epochs=1",
            "train.batch_size=8",
            "train.learning_rate=0.5",
            "train.warmup_fraction=0",
            "train.patience=0",
            "train.refit=false",
        ],
    )
    with pytest.raises(ParamsError, match="holds its whole TF-IDF matrix"):
        defaults.resolve_params(pinned, huge)
    defaults.resolve_params(load_params(None, ["model.type='linear'", "train.memory_limit_gib=1000"]), huge)
    assert defaults.resolve_params(load_params(None, []), huge)[0].model.type == "bow"


def test_many_classes_resolve_to_bow_and_a_pinned_linear_fit_counts_its_weights():
    """A weight per class and n-gram: 500 intents over 60 k n-grams are 30 M float64 weights, times the solver's
    copies (1.3 GB, still linear); 2,000 of them are refused as the default and, pinned, by the memory limit. Few
    rows, so the ids alone would have said linear."""
    from params import ParamsError, load_params

    intents = _stats(9_000).model_copy(update={"labels": 500, "ngrams": 60_000})
    many = intents.model_copy(update={"labels": 2_000})
    assert defaults.linear_ids(load_params(None, []), many) <= defaults.LINEAR_MAX_IDS
    assert defaults.linear_weights(intents) <= defaults.LINEAR_MAX_WEIGHTS < defaults.linear_weights(many)
    assert defaults.resolve_params(load_params(None, []), intents)[0].model.type == "linear"
    assert defaults.resolve_params(load_params(None, []), many)[0].model.type == "bow"
    tight = load_params(None, ["model.type='linear'", "train.memory_limit_gib=1"])
    with pytest.raises(ParamsError, match=r"500 classes and 60,000 n-grams \(more than train.memory_limit_gib = 1\)"):
        defaults.resolve_params(tight, intents)


def test_the_transform_is_tfidfvectorizers_sublinear_smoothed_l2_tfidf():
    sk = pytest.importorskip("sklearn.feature_extraction.text")
    rng = np.random.default_rng(3)
    lengths = rng.integers(0, 12, 300)
    ids = rng.integers(0, 500, int(lengths.sum())).astype(np.int32)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    columns = np.unique(ids).astype(np.int32)
    lookup = linear.lookup_of(columns, 500)
    n = len(offsets)
    _, col, _ = linear._pairs(ids, offsets, lookup)
    idf = np.log((1.0 + n) / (1.0 + np.bincount(col, minlength=len(columns)))) + 1.0
    row, col, val = linear.tfidf(ids, offsets, lookup, idf)
    ours = np.zeros((n, len(columns)))
    ours[row, col] = val
    docs = [[str(i) for i in ids[o : o + k]] for o, k in zip(offsets, lengths, strict=True)]
    vec = sk.TfidfVectorizer(analyzer=lambda d: d, sublinear_tf=True, vocabulary=[str(c) for c in columns])
    assert np.allclose(ours, vec.fit_transform(docs).toarray(), atol=1e-12)


def _fit(params_factory, tmp_path, name: str, rows: int = 3_000):
    folder = _table(tmp_path / "src", generated_rows(rows))
    p = _params(params_factory, folder, **{"model.type": "linear", "train.refit": True})
    ds = data.fetch_dataset(p, tmp_path / name)
    store = LocalStore(tmp_path / name / "store")
    feats = model_types.featurize(ds, p, store, tmp_path / name)
    trained = model_types.train(feats, p, store, ModelRef("sentiment", name), tmp_path / name)
    return p, store, feats, trained


def test_the_fit_repeats_bit_for_bit_learns_and_refits_on_validation(params_factory, tmp_path):
    p, store, feats, trained = _fit(params_factory, tmp_path, "a")
    _, _, _, again = _fit(params_factory, tmp_path, "b")
    sha = lambda t: hashlib.sha256(Path(t.weights_path).read_bytes()).hexdigest()  # noqa: E731
    assert sha(trained) == sha(again)
    assert len(trained.history) == 1 and trained.best_epoch == 1
    assert trained.history[0]["val_accuracy"] > 0.8
    assert trained.refit["rows"] == feats.counts["train"] + feats.counts["validation"]
    arrays = load_features(feats, store, tmp_path / "a")
    probs = model_types.split_scorer(trained, p, arrays, 2, store)("test")
    assert probs.shape == (feats.counts["test"], 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == arrays["test_y"]).mean() > 0.8


def test_the_published_scorer_scores_raw_texts_as_training_scored_their_features(params_factory, tmp_path):
    p, store, feats, trained = _fit(params_factory, tmp_path, "a", rows=1_500)
    folder = tmp_path / "published"
    folder.mkdir()
    Path(trained.weights_path).replace(folder / "weights.safetensors")
    cfg = model_types.feature_config(p, feats.labels)
    scorer = model_types.load_scorer(folder, cfg, "m1")
    texts = generated_rows(40, seed=99)["text"].tolist() + ["", "zzz qqq never seen"]
    ids, offsets = encode(texts, p.preprocess)
    direct = linear.LinearScores(linear.load_tensors(folder / "weights.safetensors"), p.preprocess.buckets, 2)
    assert np.array_equal(scorer(texts), direct(ids, offsets))
    # A text with no n-gram the fit saw scores as the bias alone: finite, one row summing to 1.
    unseen = scorer(["zzz qqq never seen"])
    assert np.isfinite(unseen).all() and abs(float(unseen.sum()) - 1) < 1e-5


def test_a_declared_label_without_fitting_rows_is_never_predicted():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 6, 200)
    ids = rng.integers(0, 64, int(lengths.sum())).astype(np.int32)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    y = rng.integers(0, 2, 200) * 2  # classes 0 and 2 of 3
    tensors, loss = linear.fit_tensors(ids, offsets, y, 3, 64, 4.0, seed=1)
    probs = linear.LinearScores(tensors, 64, 3)(ids, offsets)
    assert np.isfinite(loss) and np.isfinite(probs).all()
    assert probs[:, 1].max() < 1e-6 and set(np.unique(probs.argmax(1))) <= {0, 2}


def test_a_shipped_run_is_linear_verifies_bit_for_bit_and_serves_without_torch(prefect_api, tk_home, tmp_path):
    from flows.train import train
    from params import load_params

    params = load_params(REPO / "params" / "sentiment.toml", {"tracking.backend": "none"})
    train(params=params, model_id="linear-1")
    store = open_store()
    manifest = json.loads(store.get_bytes("sentiment/linear-1/manifest.json"))
    assert manifest["model_type"] == "linear"
    assert manifest["lineage"]["params"]["model"]["type"] == "linear"
    report = verify_model(store, "linear-1")
    assert report.ok and report.identical
    code = (
        "import sys, json\nfrom pathlib import Path\nfrom trainkite.manifest import fetch_model\n"
        "from trainkite.store import open_store\nfrom models.lean_predictor import load_predictor\n"
        "folder, manifest = fetch_model(open_store(), 'linear-1')\n"
        "p = load_predictor(folder, manifest)\n"
        "out = p.predict(['The pay is fair but management ignores our workload.'])\n"
        "print(json.dumps({'backend': p.backend, 'out': out, "
        "'heavy': sorted(m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules)}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["backend"] == "numpy" and got["heavy"] == []
    assert got["out"][0]["model_id"] == "linear-1" and got["out"][0]["label"] in ("negative", "neutral", "positive")


def test_a_confusion_plot_of_many_classes_keeps_a_bounded_size(tmp_path):
    from PIL import Image

    from tasks.evaluate import MAX_FIGURE_INCHES, plot_confusion

    n = 500
    cm = np.diag(np.full(n, 3)).tolist()
    plot_confusion(cm, [f"intent_{i}" for i in range(n)], "test (n=1500)", tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as img:
        assert max(img.size) <= MAX_FIGURE_INCHES * 100  # 100 dpi; at 0.9 inch per class it was 45,000 pixels
    plot_confusion([[5, 1], [2, 7]], ["neg", "pos"], "test (n=15)", tmp_path / "small.png")
    with Image.open(tmp_path / "small.png") as img:
        assert max(img.size) <= 300
