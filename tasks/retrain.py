"""Scheduled retraining decides by data fingerprint: same rows as the last model → nothing to learn."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel

from params.model import Params
from tasks.data import fetch_dataset
from trainkite.manifest import list_models
from trainkite.store import ArtifactStore


class RetrainDecision(BaseModel):
    retrain: bool
    reason: str
    fingerprint: str
    last_model_id: str | None = None
    last_fingerprint: str | None = None


def current_fingerprint(params: Params) -> str:
    with tempfile.TemporaryDirectory(prefix="trainkite-retrain-") as tmp:
        return fetch_dataset(params, Path(tmp)).fingerprint


def last_model(store: ArtifactStore, name: str) -> dict | None:
    models = [m for m in list_models(store) if m.get("model_name") == name]
    return models[-1] if models else None


def decide(params: Params, store: ArtifactStore, force: bool = False) -> RetrainDecision:
    fp = current_fingerprint(params)
    last = last_model(store, params.model.name)
    last_fp = last["lineage"]["data"]["fingerprint"] if last else None
    last_id = last["model_id"] if last else None
    if force:
        return RetrainDecision(
            retrain=True, reason="forced", fingerprint=fp, last_model_id=last_id, last_fingerprint=last_fp
        )
    if last is None:
        return RetrainDecision(retrain=True, reason=f"no {params.model.name} model yet", fingerprint=fp)
    if fp == last_fp:
        return RetrainDecision(
            retrain=False,
            fingerprint=fp,
            last_model_id=last_id,
            last_fingerprint=last_fp,
            reason=f"data unchanged since {last_id} (fingerprint {fp[:12]}…)",
        )
    return RetrainDecision(
        retrain=True,
        fingerprint=fp,
        last_model_id=last_id,
        last_fingerprint=last_fp,
        reason=f"data changed since {last_id} ({last_fp[:12]}… → {fp[:12]}…)",
    )
