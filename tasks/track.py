"""Weights & Biases tracking: resolved params as config, per-epoch metrics, confusion matrix, the model.

Offline by default (`WANDB_MODE=offline`, set by trainkite unless the user set it); the run ID
is derived from the model ID, so the manifest can name the run before it exists.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from params.model import Params
from tasks.evaluate import EvalReport
from tasks.publish import Published
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.track")


def track_run(*, params: Params, published: Published, report: EvalReport, store: ArtifactStore,
              tags: list[str] | None = None) -> dict | None:
    if params.tracking.backend == "none":
        log.info("tracking is off (tracking.backend = 'none')")
        return None
    import wandb

    run_id = published.manifest["lineage"]["wandb"]["run_id"]
    # A sweep's runs carry its ID as a tag (`sweep-...`); W&B groups them under it.
    group = next((t for t in tags or [] if t.startswith("sweep-")), None)
    settings = wandb.Settings(x_disable_stats=True, x_save_requirements=False, disable_code=True,
                              disable_git=True, console="off", silent=True)
    run = wandb.init(
        project=params.tracking.project, entity=params.tracking.entity, id=run_id, name=published.model_id,
        config=params.model_dump(mode="json"), job_type="train", tags=tags or [], group=group, resume="allow",
        settings=settings, reinit="create_new",
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
            run.log({f"{split}_confusion": wandb.plot.confusion_matrix(
                y_true=y_true, preds=y_pred, class_names=labels, title=f"{split} confusion")})
        art = wandb.Artifact(f"model-{published.model_name}", type="model",
                             metadata={"model_id": published.model_id, **report.summary})
        # A reference to the published files, not a staging copy: the store is the source of truth.
        local = store.local_path(f"{published.model_name}/{published.model_id}")
        if local is not None:
            art.add_reference(Path(local).as_uri(), name=published.model_id, checksum=True)
        else:
            art.add_reference(published.artifact_uri + "/", name=published.model_id, checksum=False)
        run.log_artifact(art, aliases=[published.model_id])
        info = {"run_id": run.id, "project": params.tracking.project, "entity": params.tracking.entity,
                "mode": os.environ.get("WANDB_MODE", "online"), "run_dir": str(run.settings.sync_dir)}
    finally:
        run.finish()
    return info


def run_url(info: dict | None) -> str | None:
    if not info or info.get("mode") in ("offline", "disabled"):
        return None
    base = os.environ.get("WANDB_BASE_URL_APP", "https://wandb.ai")
    entity = info.get("entity") or ""
    return f"{base}/{entity}/{info['project']}/runs/{info['run_id']}" if entity else None
