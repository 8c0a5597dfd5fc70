"""Encoder quality: all-MiniLM-L6-v2 + a linear head trained on SST-2, scored on SST-2 dev and, out of domain,
on the UCI sentiment sentences (Amazon, Yelp); the bow model on the same rows for reference.

    .venv/bin/pip install -e '.[encoder,bench]'
    .venv/bin/python benchmarks/encoder_quality.py --sst2 ../shared/data/sst2 --uci ../shared/data/uci_sentences \
        [--train-rows 20000] [--mode frozen|finetune] [--set train.epochs=10 ...]

`frozen` (CPU): the encoder embeds every text once, then only the head trains. `finetune` trains the
whole encoder and is meant for a GPU (bf16 autocast); without one the script says so and exits 3, unless
`--cpu` asks for the same fine-tuning on the CPU (fp32; slow: use --train-rows and --set train.epochs=1). SST-2 dev
is the evaluation set (`evaluation.query`), as a human-labelled held-out set is in production.
Prints one JSON object; BENCHMARKS.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

COMMON = [
    "data.labels=['0','1']",
    "data.validation_fraction=0.05",
    "data.test_fraction=0.05",
    'evaluation.query="SELECT text, CAST(label AS VARCHAR) AS label FROM dev"',
    "evaluation.primary_metric='accuracy'",
    "tracking.backend='none'",
    "train.patience=0",
]
ENCODER = {
    "frozen": [
        "model.type='encoder'",
        "model.encoder_mode='frozen'",
        "train.epochs=10",
        "train.batch_size=64",
        "train.learning_rate=0.001",
    ],
    "finetune": [
        "model.type='encoder'",
        "model.encoder_mode='finetune'",
        "train.epochs=3",
        "train.batch_size=32",
        "train.learning_rate=3e-5",
        "train.weight_decay=0.01",
        "train.device='cuda'",
        "train.amp=true",
    ],
}
BOW = [
    "model.type='bow'",
    "preprocess.buckets=1048576",
    "preprocess.ngram_max=2",
    "model.embedding_dim=16",
    "train.epochs=5",
    "train.batch_size=256",
    "train.learning_rate=0.5",  # the shipped rate (tasks/defaults.py)
    "train.threads=1",
]


def train_query(rows: int | None) -> str:
    # md5 order: a fixed subset whatever order the engine reads the file in.
    limit = f" ORDER BY md5(text) LIMIT {rows}" if rows else ""
    return f'data.query="SELECT text, CAST(label AS VARCHAR) AS label FROM train{limit}"'


def run(folder: Path, overrides: list[str]) -> tuple[dict, object, object, Path]:
    from params import load_params
    from tasks import data, defaults, evaluate as ev
    from models import registry as model_types
    from trainkite.manifest import ModelRef
    from trainkite.store import LocalStore

    params = load_params(None, [f"data.path={json.dumps(str(folder))}", *overrides])
    work = Path(tempfile.mkdtemp(prefix="bench-encoder-"))
    store = LocalStore(work / "store")
    t0 = time.perf_counter()
    ds = data.fetch_dataset(params, work)
    params = defaults.resolve_params(params, defaults.dataset_stats(ds.snapshot_path, params.preprocess.ngram_max))[0]
    t1 = time.perf_counter()
    feats = model_types.featurize(ds, params, store, work)
    t2 = time.perf_counter()
    trained = model_types.train(feats, params, store, ModelRef("sst2", "bench"), work)
    t3 = time.perf_counter()
    rep = ev.evaluate(trained, feats, params, store, work, "sst2/bench")
    out = {
        "train_rows": ds.counts["train"],
        "dev_accuracy": round(rep.metrics["evaluation"]["accuracy"], 4),
        "test_split_accuracy": round(rep.metrics["test"]["accuracy"], 4),
        "fetch_s": round(t1 - t0, 1),
        "features_s": round(t2 - t1, 1),
        "train_s": round(t3 - t2, 1),
        "epochs": trained.epochs_run,
        "best_epoch": trained.best_epoch,
        "device": trained.device,
    }
    return out, params, trained, work


def scorer_for(params, trained):
    """texts -> class probabilities, exactly as `Predictor` would serve the published model."""
    if params.model.type == "encoder":
        from models.encoder import EncoderScorer, feature_config

        cfg = {"encoder": feature_config(params.model.encoder_max_length, params.model.encoder_mode)}
        return EncoderScorer(Path(trained.weights_path), cfg, 2, "bench")
    from models.bow import predict_proba
    from models.features import encode
    from models.bow import load_weights

    model = load_weights(trained.weights_path, params.preprocess.buckets, params.model.embedding_dim, 2)
    return lambda texts: predict_proba(model, *encode(texts, params.preprocess))


def out_of_domain(score, uci: Path) -> dict:
    out = {}
    for name in ("amazon", "yelp"):
        df = pd.read_csv(uci / f"{name}.csv", keep_default_na=False)
        t0 = time.perf_counter()
        pred = score(df["text"].tolist()).argmax(axis=1)
        out[name] = {
            "accuracy": round(float((pred == df["label"].to_numpy()).mean()), 4),
            "rows": len(df),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sst2", type=Path, required=True)
    ap.add_argument("--uci", type=Path, required=True)
    ap.add_argument("--train-rows", type=int, default=None, help="Train on this many SST-2 rows (default: all).")
    ap.add_argument("--mode", choices=("frozen", "finetune"), default="frozen")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--skip-bow", action="store_true")
    ap.add_argument("--cpu", action="store_true", help="finetune on the CPU (no GPU here)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value (encoder run)")
    args = ap.parse_args()

    import torch

    if args.mode == "finetune" and not torch.cuda.is_available() and not args.cpu:
        print(json.dumps({"mode": "finetune", "status": "not run: fine-tuning needs a CUDA GPU"}))
        sys.exit(3)
    np.random.seed(0)
    query = train_query(args.train_rows)
    report: dict = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_avg_before": os.getloadavg(),
        },
        "train_rows_requested": args.train_rows,
        "mode": args.mode,
    }
    cpu = ["train.device='cpu'", "train.amp=false"] if args.cpu else []
    enc_overrides = [query, *COMMON, *ENCODER[args.mode], *cpu, f"train.threads={args.threads}", *args.overrides]
    result, params, trained, work = run(args.sst2, enc_overrides)
    try:
        result["out_of_domain"] = out_of_domain(scorer_for(params, trained), args.uci)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["encoder"] = {**result, "overrides": enc_overrides}
    if not args.skip_bow:
        result, params, trained, work = run(args.sst2, [query, *COMMON, *BOW])
        try:
            result["out_of_domain"] = out_of_domain(scorer_for(params, trained), args.uci)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report["bow"] = result
    report["machine"]["load_avg_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
