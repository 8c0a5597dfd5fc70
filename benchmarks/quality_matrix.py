"""The quality matrix: trainkite's shipped defaults next to fastText and TF-IDF + LogisticRegression on every
labelled set in ../shared/data, plus the bundled demo data.

    .venv/bin/pip install -c requirements.lock -e '.[bench]'          # '.[bench,encoder]' for --encoder
    flock /tmp/trainkite-bench.lock .venv/bin/python benchmarks/quality_matrix.py --data ../shared/data \\
        [--encoder] [--cells sst2_dev,amazon] [--set train.epochs=5 ...] [--out matrix.json]

Cells (trained on -> scored on):
  sst2_dev      SST-2 train.csv -> dev.csv
  sst2_amazon   SST-2 train.csv -> the UCI Amazon sentences (out of domain)
  sst2_yelp     SST-2 train.csv -> the UCI Yelp sentences (out of domain)
  amazon, yelp  each UCI set alone, 80 % -> a held-out 20 % (seeded hash of the text)
  glassdoor     the Glassdoor sample's own 1-5 star `label`, 80 % -> 20 % held out, the same way
  demo_sentiment, demo_topic   the bundled demo data, comments -> holdout (params/sentiment.toml, topic.toml)

trainkite runs with a shipped params file as a new user would: only data.path, data.query, data.labels
(unset: taken from the data) and evaluation.query (the scored set) changed, so every other key is the
shipped value or resolved from the data (tasks/defaults.py). trainkite holds back its own validation and
test splits from the training rows (the shipped fractions); the baselines get every training row.
fastText: library defaults + wordNgrams=2, thread=1 (trainkite trains on one thread too). TF-IDF:
TfidfVectorizer(ngram_range=(1, 2)) + LogisticRegression(max_iter=1000), library defaults otherwise.
Fit time: trainkite's feature hashing + training (not the DuckDB fetch), fastText's train_supervised
(its tokenising included), TF-IDF's fit_transform + fit. Every learner's libraries are imported before any clock
starts (scikit-learn's import, 2.5 s here, otherwise falls in the first trainkite cell while fastText's never counts).
Prints one JSON object and a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from params import PARAMS_DIR, apply_overrides, parse_overrides, validate_params
from params.model import read_params_file
from tasks import data, defaults
from models import registry as model_types
from models.metrics import score
from trainkite.manifest import ModelRef
from trainkite.store import LocalStore

REPO = Path(__file__).resolve().parent.parent
CELLS = ["sst2_dev", "sst2_amazon", "sst2_yelp", "amazon", "yelp", "glassdoor", "demo_sentiment", "demo_topic"]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"label": str})


def _held_out(df: pd.DataFrame, fraction: float = 0.2, seed: int = 2024) -> tuple[pd.DataFrame, pd.DataFrame]:
    h = df["text"].map(lambda t: int.from_bytes(hashlib.sha256(f"{seed}|{t}".encode()).digest()[:8], "big") / 2**64)
    return df[h >= fraction].reset_index(drop=True), df[h < fraction].reset_index(drop=True)


def cell_tables(name: str, root: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(training rows, scored rows, params file) of one cell; both frames have text and label."""
    if name.startswith("sst2_"):
        train = _read(root / "sst2" / "train.csv")
        target = {
            "sst2_dev": root / "sst2" / "dev.csv",
            "sst2_amazon": root / "uci_sentences" / "amazon.csv",
            "sst2_yelp": root / "uci_sentences" / "yelp.csv",
        }[name]
        return train[["text", "label"]], _read(target)[["text", "label"]], "sentiment.toml"
    if name in ("amazon", "yelp"):
        return (*_held_out(_read(root / "uci_sentences" / f"{name}.csv")[["text", "label"]]), "sentiment.toml")
    if name == "glassdoor":
        return (*_held_out(_read(root / "glassdoor_sample" / "reviews.csv")[["text", "label"]]), "sentiment.toml")
    column = "sentiment" if name == "demo_sentiment" else "topic"
    demo = REPO / "data" / "demo"
    train = pd.read_csv(demo / "comments.csv", keep_default_na=False).rename(columns={column: "label"})
    test = pd.read_csv(demo / "holdout.csv", keep_default_na=False).rename(columns={column: "label"})
    return train[["text", "label"]], test[["text", "label"]], f"{column}.toml"


def run_trainkite(
    train: pd.DataFrame,
    test: pd.DataFrame,
    params_file: str,
    overrides: list[str],
    work: Path,
    model_type: str | None = None,
) -> dict:
    folder = work / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "scored.csv", index=False)
    raw = read_params_file(PARAMS_DIR / params_file)
    raw = apply_overrides(
        raw,
        {
            "data.path": str(folder),
            "data.query": "SELECT text, label FROM train",
            "data.labels": None,
            "evaluation.query": "SELECT text, label FROM scored",
            "tracking.backend": "none",
        },
    )
    if model_type is not None:
        raw = apply_overrides(raw, {"model.type": model_type})
    if overrides:
        raw = apply_overrides(raw, parse_overrides(overrides))
    params = validate_params(raw, source=params_file)
    store = LocalStore(work / "store")
    ds = data.fetch_dataset(params, work)
    t0 = time.perf_counter()
    st = defaults.dataset_stats(
        ds.snapshot_path, params.preprocess.ngram_max, len(ds.labels), max_tokens=params.preprocess.max_tokens
    )
    params, table = defaults.resolve_params(params, st)
    t1 = time.perf_counter()
    feats = model_types.featurize(ds, params, store, work)
    t2 = time.perf_counter()
    trained = model_types.train(feats, params, store, ModelRef("bench", "bench"), work)
    t3 = time.perf_counter()
    from models.features import load_features

    arrays = load_features(feats, store, work)
    probs = model_types.split_scorer(trained, params, arrays, len(feats.labels), store)("evaluation")
    m = score(arrays["evaluation_y"], probs, feats.labels)
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "fit_s": round(t3 - t0, 2),
        "features_s": round(t2 - t1, 2),
        "train_s": round(t3 - t2, 2),
        "epochs_run": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        # The first fit's best validation score of the primary metric (what early stopping chose on).
        "validation": max(h[f"val_{params.evaluation.primary_metric}"] for h in trained.history),
        "stats": st.model_dump(),
        "resolved": {k: v["value"] for k, v in table.items() if v["source"] == "data"},
    }


def _metrics(truth: pd.Series, pred: list[str] | np.ndarray) -> dict:
    labels = sorted(set(truth) | set(pred))
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.asarray([index[v] for v in truth])
    onehot = np.eye(len(labels))[[index[v] for v in pred]]
    m = score(y, onehot, labels)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def run_fasttext(train: pd.DataFrame, test: pd.DataFrame, work: Path) -> dict:
    import fasttext

    path = work / "fasttext-train.txt"
    with path.open("w", encoding="utf-8") as f:
        for t, lab in zip(train["text"], train["label"], strict=True):
            f.write(f"__label__{lab} {' '.join(str(t).split())}\n")
    t0 = time.perf_counter()
    model = fasttext.train_supervised(str(path), wordNgrams=2, thread=1, verbose=0)
    t1 = time.perf_counter()
    pred = [model.predict(" ".join(str(t).split()))[0][0].replace("__label__", "") for t in test["text"]]
    return {**_metrics(test["label"], pred), "fit_s": round(t1 - t0, 2)}


def run_tfidf(train: pd.DataFrame, test: pd.DataFrame) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2))
    clf = LogisticRegression(max_iter=1000).fit(vec.fit_transform(train["text"]), train["label"])
    t1 = time.perf_counter()
    pred = clf.predict(vec.transform(test["text"]))
    return {**_metrics(test["label"], list(pred)), "fit_s": round(t1 - t0, 2)}


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def markdown(results: dict) -> str:
    head = (
        "| cell | train rows | trainkite acc / F1 | fastText acc / F1 | TF-IDF+LR acc / F1 | encoder acc / F1 "
        "| fit s: trainkite / fastText / TF-IDF / encoder | trainkite ≥ best baseline |"
    )
    lines = [head, "|" + "---|" * 8]
    for name, r in results.items():
        tk, ft, lr, en = r.get("trainkite"), r.get("fasttext"), r.get("tfidf_logreg"), r.get("encoder")
        best = max((b["accuracy"] for b in (ft, lr) if b), default=None)
        best_f1 = max((b["macro_f1"] for b in (ft, lr) if b), default=None)
        ok = (
            "–"
            if best is None or tk is None
            else (
                "yes"
                if tk["accuracy"] >= best and tk["macro_f1"] >= best_f1
                else f"no ({100 * (tk['accuracy'] - best):+.1f} acc, {100 * (tk['macro_f1'] - best_f1):+.1f} F1)"
            )
        )
        cell = lambda x: "–" if not x else f"{_pct(x['accuracy'])} / {_pct(x['macro_f1'])}"  # noqa: E731
        times = " / ".join("–" if not x else f"{x['fit_s']}" for x in (tk, ft, lr, en))
        lines.append(
            f"| {name} | {r['rows']['train']:,} | **{cell(tk)}** | {cell(ft)} | {cell(lr)} | {cell(en)} "
            f"| {times} | {ok} |"
        )
    return "\n".join(lines)


def warm_imports(learners: set[str]) -> None:
    """Import what each learner's fit will use, so that no cell's fit time holds a library's import."""
    import importlib

    names = {
        "trainkite": ["sklearn.linear_model", "threadpoolctl", "models.linear", "models.bow", "models.bow_native"],
        "fasttext": ["fasttext"],
        "tfidf": ["sklearn.feature_extraction.text", "sklearn.linear_model"],
    }
    for learner in learners:
        for name in names.get(learner, []):
            importlib.import_module(name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="trainkite only (experiments)")
    ap.add_argument("--learners", default="trainkite,fasttext,tfidf")
    ap.add_argument("--encoder", action="store_true", help="add the frozen-encoder row (needs the encoder extra)")
    ap.add_argument("--out")
    args = ap.parse_args()
    root = Path(args.data)
    learners = set(args.learners.split(","))
    warm_imports(learners)
    results: dict[str, dict] = {}
    for name in args.cells.split(","):
        train, test, params_file = cell_tables(name, root)
        r: dict = {"rows": {"train": len(train), "scored": len(test)}, "params_file": params_file}
        work = Path(tempfile.mkdtemp(prefix=f"qm-{name}-"))
        try:
            if "trainkite" in learners:
                r["trainkite"] = run_trainkite(train, test, params_file, args.overrides, work / "tk")
            if "fasttext" in learners:
                (work / "ft").mkdir()
                r["fasttext"] = run_fasttext(train, test, work / "ft")
            if "tfidf" in learners:
                r["tfidf_logreg"] = run_tfidf(train, test)
            if args.encoder:
                r["encoder"] = run_trainkite(train, test, params_file, [], work / "enc", model_type="encoder")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        results[name] = r
        print(json.dumps({name: {k: v for k, v in r.items() if k != "rows"}}, default=str), flush=True)
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "overrides": args.overrides,
        "cells": results,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
