"""Score the champion on the rows the challenger was evaluated on, and compare the two (tasks/compare.py).

The champion is loaded from the artifact store like any model (hashes verified) and scores the raw texts
with its own featurizer, so a champion with other preprocessing or another model type compares fairly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

import numpy as np

from tasks import aliases
import tasks.compare
from trainkite.errors import TrainkiteError
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.champion")

ALLOW_WORSE_ENV = "TRAINKITE_ALLOW_WORSE"


def allow_worse(env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(ALLOW_WORSE_ENV, "").strip() == "1"


def champion_id(store: ArtifactStore, model_name: str) -> str | None:
    found = aliases.champion_for_training(store, model_name)
    return found["model_id"] if found else None


def _wandb_of(manifest: dict) -> dict | None:
    w = (manifest.get("lineage") or {}).get("wandb")
    return {k: w.get(k) for k in ("run_id", "project", "entity")} if w else None


def compare_with_champion(
    *,
    store: ArtifactStore,
    model_name: str,
    model_id: str,
    split: str,
    y: np.ndarray,
    challenger_probs: np.ndarray,
    labels: list[str],
    read_texts: Callable[[], list[str]],
    primary_metric: str,
    seed: int = tasks.compare.DEFAULT_SEED,
) -> dict:
    """The comparison dict stored in metrics.json and the manifest; never raises for a missing champion.

    `read_texts` gives the scored split's texts; it is called only when there is a champion to score them."""
    base = {"split": split, "challenger": {"model_id": model_id}, "allow_worse": allow_worse()}
    found = aliases.champion_for_training(store, model_name)
    if found is None:
        return {
            **base,
            "verdict": tasks.compare.NO_CHAMPION,
            "champion": None,
            "reason": f"no model named {model_name!r} has been deployed or set as champion yet",
        }
    champ = {k: found.get(k) for k in ("model_id", "target", "endpoint", "since", "set_by", "source")}
    if found["model_id"] == model_id:
        return {
            **base,
            "verdict": tasks.compare.NOT_COMPARED,
            "champion": champ,
            "reason": "this model is the champion",
        }
    texts = read_texts()
    if len(texts) != len(y):
        # The texts come from the data snapshot, the labels from the features: they must be the same rows.
        return {
            **base,
            "verdict": tasks.compare.NOT_COMPARED,
            "champion": champ,
            "reason": f"{len(texts)} texts for {len(y)} labelled {split} rows: not the same rows",
        }
    try:
        from models.predictor import Predictor

        predictor = Predictor.from_store(store, found["model_id"])
        probs = predictor.predict_proba(texts)
    except TrainkiteError as err:
        # Its artifacts may be gone or refused (tampered): the reviewers are told, the run goes on.
        log.warning("champion %s could not be scored: %s", found["model_id"], err)
        return {
            **base,
            "verdict": tasks.compare.NOT_COMPARED,
            "champion": champ,
            "reason": f"champion not scored: {err}",
        }
    champ["wandb"] = _wandb_of(predictor.manifest)
    champ["metrics"] = predictor.manifest.get("metrics", {})
    # Map the champion's label names onto ours; one we do not have gets a negative index (never right).
    index = {lab: i for i, lab in enumerate(labels)}
    unknown = {-(j + 1): lab for j, lab in enumerate(predictor.labels) if lab not in index}
    mapping = np.array([index.get(lab, -(j + 1)) for j, lab in enumerate(predictor.labels)], dtype=np.int64)
    champion_pred = mapping[np.asarray(probs).argmax(axis=1)]
    result = tasks.compare.compare(
        y,
        champion_pred,
        np.asarray(challenger_probs).argmax(axis=1),
        labels,
        primary_metric=primary_metric,
        texts=texts,
        seed=seed,
        unknown_labels=unknown,
    )
    log.info("champion comparison: %s", tasks.compare.evidence_line({**result, "champion": champ}))
    return {**base, **result, "champion": champ}
