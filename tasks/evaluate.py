"""Score the trained model on the test split and on the human-labelled evaluation set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from params.model import Params
from trainkite.snapshot import DatasetRef
from models.metrics import score
from models.features import FeaturesRef, load_features
from models.registry import split_scorer
from models.trained import TrainedModel
from trainkite.runfiles import METRICS, run_key, stage
from trainkite.store import ArtifactStore


class EvalReport(BaseModel):
    metrics: dict
    summary: dict[str, float]
    metrics_path: str
    plots: dict[str, str]
    # Store keys of the same files, for a re-run on another machine.
    staged: dict[str, str] = {}


# Up to this many classes each cell carries its count and each axis its labels; above it the figure keeps a
# fixed size (a 500-class matrix at 0.9 inch per class was a 45,000-pixel-wide image: 7 GB, the run killed).
ANNOTATED_CLASSES = 30
MAX_FIGURE_INCHES = 14.0


def plot_confusion(cm: list[list[int]], labels: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(cm)
    n = len(labels)
    size = (min(1.2 + 0.9 * n, MAX_FIGURE_INCHES), min(1.0 + 0.8 * n, MAX_FIGURE_INCHES))
    fig, ax = plt.subplots(figsize=size, dpi=100)
    ax.imshow(m, cmap="Blues", interpolation="nearest")
    if n <= ANNOTATED_CLASSES:
        ax.set_xticks(range(n), labels, rotation=45, ha="right")
        ax.set_yticks(range(n), labels)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                color = "white" if m[i, j] > m.max() / 2 else "black"
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color=color)
    else:  # counts and names are in metrics.json; the picture shows where the mass is
        title = f"{title}, {n} classes in label order"
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Fixed metadata keeps the PNG bytes stable for the same matrix.
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def evaluate(
    trained: TrainedModel,
    features: FeaturesRef,
    params: Params,
    store: ArtifactStore,
    workdir: Path,
    prefix: str,
    dataset: DatasetRef | None = None,
) -> EvalReport:
    """Score every split; with `dataset` (the raw texts) also the champion on the same evaluation rows."""
    arrays = load_features(features, store, workdir)
    probs_of = split_scorer(trained, params, arrays, len(features.labels), store)
    metrics: dict = {"best_epoch": trained.best_epoch, "epochs_run": trained.epochs_run, "history": trained.history}
    if trained.refit:
        # The refit trained on the validation rows: their honest score is the first fit's at its best epoch.
        best = next(r for r in trained.history if r["epoch"] == trained.best_epoch)
        metrics["refit"] = trained.refit
        metrics["validation"] = {
            "accuracy": best["val_accuracy"],
            "macro_f1": best["val_macro_f1"],
            "measured_on": f"the first fit at epoch {trained.best_epoch}, before the refit trained on these rows",
        }
    plots: dict[str, str] = {}
    split_probs: dict[str, np.ndarray] = {}
    for split in ("validation", "test", "evaluation"):
        y = arrays[f"{split}_y"]
        if len(y) == 0 or split in metrics:
            continue
        probs = split_probs[split] = probs_of(split)
        metrics[split] = score(y, probs, features.labels)
        if split != "validation" and metrics[split]["confusion"] is not None:
            path = workdir / "plots" / f"confusion_{split}.png"
            plot_confusion(metrics[split]["confusion"], features.labels, f"{split} (n={len(y)})", path)
            plots[split] = str(path)
    summary = {}
    for split in ("validation", "test", "evaluation"):
        if split in metrics:
            summary[f"{split}_accuracy"] = round(metrics[split]["accuracy"], 4)
            summary[f"{split}_macro_f1"] = round(metrics[split]["macro_f1"], 4)
    metrics["summary"] = summary
    if dataset is not None:
        metrics["comparison"] = _champion_comparison(
            dataset, arrays, split_probs, features, params, store, Path(prefix).name
        )
        cm = (metrics["comparison"].get("confusion") or {}).get("champion")
        if cm:
            path = workdir / "plots" / "confusion_champion.png"
            champ = metrics["comparison"]["champion"]["model_id"]
            plot_confusion(cm, features.labels, f"champion {champ} on {metrics['comparison']['split']}", path)
            plots["champion"] = str(path)
    out = workdir / "metrics.json"
    out.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    staged = {str(out): stage(store, out, run_key(prefix, METRICS))}
    for path in plots.values():
        staged[path] = stage(store, Path(path), run_key(prefix, f"plots/{Path(path).name}"))
    return EvalReport(metrics=metrics, summary=summary, metrics_path=str(out), plots=plots, staged=staged)


def _champion_comparison(
    dataset: DatasetRef,
    arrays: dict,
    split_probs: dict,
    features: FeaturesRef,
    params: Params,
    store: ArtifactStore,
    model_id: str,
) -> dict:
    from tasks.champion import compare_with_champion
    from trainkite.snapshot import local_snapshot, split_texts

    # The human-labelled set is what both models are judged on; without one, the test split.
    split = "evaluation" if "evaluation" in split_probs else "test"
    if split not in split_probs:
        return {"verdict": "not compared", "champion": None, "reason": "no evaluation or test rows"}
    return compare_with_champion(
        store=store,
        model_name=params.model.name,
        model_id=model_id,
        split=split,
        y=arrays[f"{split}_y"],
        challenger_probs=split_probs[split],
        labels=features.labels,
        read_texts=lambda: split_texts(local_snapshot(dataset, store), split),
        primary_metric=params.evaluation.primary_metric,
        seed=params.train.seed,
    )


def one_line(summary: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in summary.items())
