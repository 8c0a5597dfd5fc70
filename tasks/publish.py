"""Publish a trained model: files first, `manifest.json` (lineage + sha256 of every file) last."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from pydantic import BaseModel

from buildkite.context import BuildContext
from params.model import Params
from trainkite.snapshot import DatasetRef, local_snapshot
from models.features import schemas
from tasks.evaluate import EvalReport
from models.onnx_export import serving_files
from models.trained import TrainedModel, check_finite_weights
from models.registry import feature_config
from trainkite import manifest as mf
from trainkite.lineage import code_version, docker_image, git_info, package_versions
from trainkite.run import Run
from trainkite.runfiles import local_copy
from trainkite.store import local_write

log = logging.getLogger("trainkite.publish")


class Published(BaseModel):
    model_id: str
    model_name: str
    artifact_uri: str
    manifest: dict


def wandb_run_id(model_id: str) -> str:
    return model_id.replace(".", "-")


def _champion_lineage(comparison: dict | None) -> dict | None:
    """Which model this one was judged against, the verdict, and whether a worse verdict was overridden."""
    if not comparison:
        return None
    return {
        "model_id": (comparison.get("champion") or {}).get("model_id"),
        "verdict": comparison.get("verdict"),
        "allow_worse": bool(comparison.get("allow_worse")),
    }


def publish_model(
    *,
    run: Run,
    params: Params,
    dataset: DatasetRef,
    trained: TrainedModel,
    report: EvalReport,
    build: BuildContext | None = None,
) -> Published:
    # A full disk or read-only folder while staging is one clear StoreError; the manifest (written last by
    # mf.publish) is never written, so no half-published model is visible.
    with local_write(f"stage the files of {run.model_id} under {run.workdir / 'publish'}"):
        ref, model_id, store, workdir = run.ref, run.model_id, run.store, run.workdir
        stage = workdir / "publish"
        shutil.rmtree(stage, ignore_errors=True)
        (stage / "data").mkdir(parents=True)

        def local(path: str, key: str | None) -> Path:
            return local_copy(store, key, Path(path)) if key else Path(path)

        weights = local(trained.weights_path, trained.weights_key)
        check_finite_weights(weights)  # the last gate: a diverged model never reaches the store
        files: dict[str, Path] = {
            "weights.safetensors": weights,
            "metrics.json": local(report.metrics_path, report.staged.get(report.metrics_path)),
        }
        features = feature_config(params, trained.labels)
        (stage / "features.json").write_text(json.dumps(features, indent=2, sort_keys=True))
        # What torch-free serving needs (the encoder's ONNX export, checked against torch), listed like every file.
        serving_extra, serving = serving_files(
            params.model.type, files["weights.safetensors"], features, len(trained.labels), model_id, stage / "serving"
        )
        files.update(serving_extra)
        (stage / "params.json").write_text(json.dumps(params.model_dump(mode="json"), indent=2, sort_keys=True))
        files["features.json"] = stage / "features.json"
        files["params.json"] = stage / "params.json"
        for split, path in report.plots.items():
            files[f"plots/confusion_{split}.png"] = local(path, report.staged.get(path))
        rows = sum(dataset.counts.values())
        snapshot = rows <= params.data.snapshot_max_rows
        if snapshot:
            files["data/snapshot.parquet"] = local_snapshot(dataset, store)
        source = {
            "source": dataset.source,
            "query": dataset.query,
            "evaluation_query": dataset.evaluation_query,
            "fingerprint": dataset.fingerprint,
            "counts": dataset.counts,
            "athena": dataset.athena,
            "snapshot": "data/snapshot.parquet" if snapshot else None,
            "warnings": dataset.warnings,
        }
        (stage / "data" / "source.json").write_text(json.dumps(source, indent=2, sort_keys=True))
        files["data/source.json"] = stage / "data" / "source.json"

        tracking = params.tracking.backend != "none"
        lineage = {
            "model_id": model_id,
            "build": build.model_dump() if build else None,
            "git": git_info(),
            "params_hash": params.params_hash(),
            "params": params.model_dump(mode="json"),
            "data": {
                "fingerprint": dataset.fingerprint,
                "query": dataset.query,
                "evaluation_query": dataset.evaluation_query,
                "source": dataset.source,
                "counts": dataset.counts,
                "snapshot": source["snapshot"],
                "athena": dataset.athena,
                mf.SCHEMAS_FIELD: schemas(params.model.type),
            },
            "wandb": {
                "run_id": wandb_run_id(model_id),
                "project": params.tracking.project,
                "entity": params.tracking.entity,
            }
            if tracking
            else None,
            "docker_image": docker_image(),
            "packages": package_versions(),
            "code_version": code_version(),
            "seed": params.train.seed,
            "device": trained.device,
            "threads": params.train.threads,
            "champion": _champion_lineage(report.metrics.get("comparison")),
        }
        manifest = mf.publish(
            store,
            ref,
            files,
            {
                "lineage": lineage,
                "labels": trained.labels,
                "metrics": report.summary,
                "model_type": params.model.type,
                "serving": serving,
                "resumed_from_epoch": trained.resumed_from_epoch,
                "comparison": report.metrics.get("comparison"),
            },
        )
        log.info("published %s to %s", model_id, store.uri(ref.prefix))
        return Published(model_id=model_id, model_name=ref.name, artifact_uri=store.uri(ref.prefix), manifest=manifest)
