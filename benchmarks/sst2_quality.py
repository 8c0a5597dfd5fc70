"""Quality and speed of `bow` on SST-2 (train.csv -> dev.csv) next to TF-IDF+LogisticRegression and fastText.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/sst2_quality.py --data ../shared/data/sst2 [--set train.epochs=5 ...]

The dev set is passed as the evaluation set (`evaluation.query`), exactly as a human-labelled
held-out set is in production. Prints one JSON object; BENCHMARKS.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from params import load_params
from tasks import data, defaults, evaluate as ev
from models import bow, features as pp
from trainkite.manifest import ModelRef
from trainkite.store import LocalStore

BOW_DEFAULTS = [
    'data.query="SELECT text, CAST(label AS VARCHAR) AS label FROM train"',
    'evaluation.query="SELECT text, CAST(label AS VARCHAR) AS label FROM dev"',
    "data.labels=['0','1']",
    "data.validation_fraction=0.05",
    "data.test_fraction=0.05",
    "preprocess.buckets=1048576",
    "preprocess.ngram_max=2",
    "model.embedding_dim=16",
    "train.epochs=5",
    "train.batch_size=256",
    "train.learning_rate=0.5",  # the shipped rate (tasks/defaults.py)
    "train.patience=0",
    "evaluation.primary_metric='accuracy'",
    "tracking.backend='none'",
    "train.threads=1",
]


def run_bow(folder: Path, overrides: list[str]) -> dict:
    params = load_params(None, [f"data.path={json.dumps(str(folder))}", *BOW_DEFAULTS, *overrides])
    work = Path(tempfile.mkdtemp(prefix="bench-bow-"))
    try:
        store = LocalStore(work / "store")
        t0 = time.perf_counter()
        ds = data.fetch_dataset(params, work)
        stats = defaults.dataset_stats(ds.snapshot_path, params.preprocess.ngram_max)
        params = defaults.resolve_params(params, stats)[0]
        t1 = time.perf_counter()
        feats = pp.preprocess(ds, params.preprocess, store, work)
        t2 = time.perf_counter()
        trained = bow.train_bow(feats, params, store, ModelRef("sst2", "bench"), work)
        t3 = time.perf_counter()
        rep = ev.evaluate(trained, feats, params, store, work, "sst2/bench")
        return {
            "dev_accuracy": rep.metrics["evaluation"]["accuracy"],
            "fetch_s": round(t1 - t0, 2),
            "preprocess_s": round(t2 - t1, 2),
            "train_s": round(t3 - t2, 2),
            "train_plus_features_s": round(t3 - t1, 2),
            "epochs": trained.epochs_run,
            "samples_per_s": trained.samples_per_second,
            "threads": params.train.threads,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_tfidf(train: pd.DataFrame, dev: pd.DataFrame) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    x = vec.fit_transform(train["text"])
    clf = LogisticRegression(max_iter=1000, C=4.0).fit(x, train["label"])
    t1 = time.perf_counter()
    acc = float((clf.predict(vec.transform(dev["text"])) == dev["label"]).mean())
    return {"dev_accuracy": acc, "train_s": round(t1 - t0, 2)}


def run_fasttext(train: pd.DataFrame, dev: pd.DataFrame) -> dict:
    import fasttext

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        for t, lab in zip(train["text"], train["label"], strict=True):
            f.write(f"__label__{lab} {t}\n")
    t0 = time.perf_counter()
    model = fasttext.train_supervised(f.name, wordNgrams=2, epoch=5, verbose=0, thread=1)
    t1 = time.perf_counter()
    os.unlink(f.name)
    pred = [model.predict(t)[0][0].replace("__label__", "") for t in dev["text"]]
    return {
        "dev_accuracy": float((pd.Series(pred) == dev["label"].astype(str)).mean()),
        "train_s": round(t1 - t0, 2),
        "threads": 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/sst2")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--only", choices=["bow", "tfidf", "fasttext"])
    args = ap.parse_args()
    src = Path(args.data)
    train = pd.read_csv(src / "train.csv", keep_default_na=False, dtype={"label": str})
    dev = pd.read_csv(src / "dev.csv", keep_default_na=False, dtype={"label": str})
    folder = Path(tempfile.mkdtemp(prefix="bench-sst2-"))
    train[["text", "label"]].to_csv(folder / "train.csv", index=False)
    dev[["text", "label"]].to_csv(folder / "dev.csv", index=False)
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": {"train": len(train), "dev": len(dev)},
    }
    if args.only in (None, "bow"):
        out["bow"] = run_bow(folder, args.overrides)
    if args.only in (None, "tfidf"):
        out["tfidf_logreg"] = run_tfidf(train, dev)
    if args.only in (None, "fasttext"):
        out["fasttext"] = run_fasttext(train, dev)
    shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
