"""Weights & Biases tracking: resolved params as config, per-epoch metrics, confusion matrix, the model.

Offline by default (`WANDB_MODE=offline`, set by trainkite unless the user set it); the run ID
is derived from the model ID, so the manifest can name the run before it exists.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from params.model import Params
from tasks.evaluate import EvalReport
from tasks.publish import Published
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.track")

_warm_up: threading.Thread | None = None
_warm_lock = threading.Lock()


def start(params: Params) -> None:
    """Begin W&B's slow start now, in the background: `import wandb` (seconds) and its service process.

    Called when the run starts, so that this overlaps fetching, preprocessing and training instead of
    adding to the run after publish; `track_run` then only creates the run, logs and finishes. Returns at
    once; does nothing when tracking is off or it was already started in this process.
    """
    global _warm_up
    if params.tracking.backend == "none":
        return
    with _warm_lock:
        if _warm_up is None:
            _warm_up = threading.Thread(target=_prepare, name="trainkite-wandb-start", daemon=True)
            _warm_up.start()


def _prepare() -> None:
    try:
        import wandb

        wandb.setup()
    except Exception as err:  # track_run imports it again and reports a real problem there
        log.debug("W&B warm-up failed: %s", err)


def _wait_for_start(timeout: float = 120.0) -> None:
    thread = _warm_up
    if thread is not None:
        thread.join(timeout)


def track_run(
    *, params: Params, published: Published, report: EvalReport, store: ArtifactStore, tags: list[str] | None = None
) -> dict | None:
    if params.tracking.backend == "none":
        log.info("tracking is off (tracking.backend = 'none')")
        return None
    _wait_for_start()
    import wandb

    run_id = published.manifest["lineage"]["wandb"]["run_id"]
    # A sweep's runs carry its ID as a tag (`sweep-...`); W&B groups them under it.
    group = next((t for t in tags or [] if t.startswith("sweep-")), None)
    settings = wandb.Settings(
        x_disable_stats=True, x_save_requirements=False, disable_code=True, disable_git=True, console="off", silent=True
    )
    run = wandb.init(
        project=params.tracking.project,
        entity=params.tracking.entity,
        id=run_id,
        name=published.model_id,
        config=params.model_dump(mode="json"),
        job_type="train",
        tags=tags or [],
        group=group,
        resume="allow",
        settings=settings,
        reinit="create_new",
    )
    try:
        for row in report.metrics.get("history", []):
            run.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        for k, v in report.summary.items():
            run.summary[k] = v
        run.summary["model_id"] = published.model_id
        run.summary["artifact_uri"] = published.artifact_uri
        split = "evaluation" if "evaluation" in report.metrics else "test"
        if split in report.metrics:
            cm = report.metrics[split]["confusion"]
            labels = published.manifest["labels"]
            y_true, y_pred = [], []
            for i, row in enumerate(cm):
                for j, count in enumerate(row):
                    y_true += [i] * count
                    y_pred += [j] * count
            run.log(
                {
                    f"{split}_confusion": wandb.plot.confusion_matrix(
                        y_true=y_true, preds=y_pred, class_names=labels, title=f"{split} confusion"
                    )
                }
            )
        comparison = report.metrics.get("comparison")
        if comparison:
            run.summary.update(comparison_summary(comparison))
        dataset = dataset_artifact(wandb, published, store)
        if dataset is not None:
            use_artifact(run, dataset)
        art = wandb.Artifact(
            f"model-{published.model_name}", type="model", metadata={"model_id": published.model_id, **report.summary}
        )
        # References to exactly the manifest's files (and the manifest), not the folder: a model folder may
        # also hold scratch (checkpoints/, run/) that is no part of the model.
        add_manifest_files(art, published, store, [*published.manifest["files"], "manifest.json"])
        run.log_artifact(art, aliases=[published.model_id])
        info = {
            "run_id": run.id,
            "project": params.tracking.project,
            "entity": params.tracking.entity,
            "mode": os.environ.get("WANDB_MODE", "online"),
            "run_dir": str(run.settings.sync_dir),
        }
    finally:
        run.finish()
    return info


DATA_FILES = ("data/snapshot.parquet", "data/source.json")


def add_manifest_files(art, published: Published, store: ArtifactStore, files: list[str]) -> None:
    """One reference per published file, named by its path in the model folder; local files checksummed."""
    prefix = f"{published.model_name}/{published.model_id}"
    for rel in files:
        local = store.local_path(f"{prefix}/{rel}")
        if local is not None:
            art.add_reference(Path(local).as_uri(), name=rel, checksum=True)
        else:
            art.add_reference(f"{published.artifact_uri}/{rel}", name=rel, checksum=False)


def dataset_artifact(wandb, published: Published, store: ArtifactStore):
    """The rows the model was trained and judged on (the published snapshot and its source), or None when the
    model kept only the data's fingerprint."""
    files = [rel for rel in DATA_FILES if rel in published.manifest["files"]]
    if not files:
        return None
    data = published.manifest["lineage"]["data"]
    art = wandb.Artifact(
        f"data-{published.model_name}",
        type="dataset",
        metadata={
            "fingerprint": data["fingerprint"],
            "query": data.get("query"),
            "evaluation_query": data.get("evaluation_query"),
            "counts": data.get("counts"),
            "source": data.get("source"),
            "sha256": {rel: published.manifest["files"][rel]["sha256"] for rel in files},
        },
    )
    add_manifest_files(art, published, store, files)
    return art


def use_artifact(run, art) -> None:
    """Log `art` as an input of `run`, so the lineage reads data -> run -> model.

    wandb refuses `use_artifact` offline ("Cannot use artifact when in offline mode"); what it does online for a
    new artifact is to log it with `use_after_commit`, and the offline transaction log keeps that flag for
    `wandb sync`. So offline takes that one private call, and falls back to a plain output if wandb changed it.
    """
    if not run.settings._offline:
        run.use_artifact(art)
        return
    try:
        run._log_artifact(art, is_user_created=True, use_after_commit=True)
    except (AttributeError, TypeError):
        log.warning("this wandb cannot record an input artifact offline; the dataset is logged as an output")
        run.log_artifact(art)


def comparison_summary(comparison: dict) -> dict:
    """The champion comparison as flat run-summary keys (W&B's run table can sort and filter them)."""
    out = {
        "champion/verdict": comparison.get("verdict"),
        "champion/model_id": (comparison.get("champion") or {}).get("model_id"),
    }
    if "metrics" in comparison:
        out.update({f"champion/{who}_{m}": v for who, ms in comparison["metrics"].items() for m, v in ms.items()})
        out.update({f"champion/delta_{m}": v for m, v in comparison["deltas"].items()})
        out.update({f"champion/delta_f1_{lab}": v["delta"] for lab, v in comparison["per_class_f1"].items()})
        out["champion/mcnemar_p"] = comparison["mcnemar"]["p_value"]
        out["champion/macro_f1_ci_low"] = comparison["bootstrap"]["ci_low"]
        out["champion/macro_f1_ci_high"] = comparison["bootstrap"]["ci_high"]
        out["champion/n"] = comparison["n"]
        out["champion/allow_worse"] = bool(comparison.get("allow_worse"))
    return out


def run_url(info: dict | None) -> str | None:
    if not info or info.get("mode") in ("offline", "disabled"):
        return None
    base = os.environ.get("WANDB_BASE_URL_APP", "https://wandb.ai")
    entity = info.get("entity") or ""
    return f"{base}/{entity}/{info['project']}/runs/{info['run_id']}" if entity else None
