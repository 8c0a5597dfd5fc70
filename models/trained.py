"""What a fit leaves, whatever the model kind: its weights file, staged in the store, and its history.

Torch-free, as are the flow's steps that pass a `TrainedModel` on: a run that fits a `linear` model never imports
torch (1.5-2 s of a process); the torch kinds' fit loop is models/fit.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel
from safetensors import SafetensorError

from trainkite.errors import IntegrityError, TrainingDiverged
from trainkite.manifest import ModelRef
from trainkite.runfiles import WEIGHTS, local_copy, run_key, stage
from trainkite.store import ArtifactStore, local_write


class TrainedModel(BaseModel):
    weights_path: str
    weights_key: str
    labels: list[str]
    history: list[dict]
    best_epoch: int
    epochs_run: int
    device: str
    resumed_from_epoch: int | None = None
    refit: dict | None = None  # {"epochs", "rows", "train_loss"} when train.refit made the published weights
    train_seconds: float
    samples_per_second: float


def with_validation_in_train(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays with the validation rows appended to the training rows, for any model kind's layout
    (`<split>_<part>`; a ragged `_offsets` array indexes its split's `_ids`)."""
    out = dict(arrays)
    for key in arrays:
        if not key.startswith("train_"):
            continue
        part = key[len("train_") :]
        train, val = arrays[key], arrays[f"validation_{part}"]
        if part == "offsets":
            val = np.asarray(val, dtype=train.dtype) + len(arrays["train_ids"])
        out[key] = np.concatenate([np.asarray(train), np.asarray(val)])
    return out


def non_finite_tensors(tensors: dict) -> list[str]:
    """Names of the tensors holding NaN or inf (torch or numpy values)."""
    bad = []
    for name, t in tensors.items():
        finite = t.isfinite().all() if hasattr(t, "isfinite") else np.isfinite(t).all()
        if not bool(finite):
            bad.append(name)
    return sorted(bad)


def check_finite_weights(path: str | Path) -> None:
    """Refuse a weights file with NaN/inf in it: publish calls it, so no such model reaches the store."""
    from safetensors.numpy import load_file as load_numpy

    try:
        tensors = load_numpy(str(path))
    except SafetensorError as err:
        raise IntegrityError(f"{Path(path).name} is not a safetensors file ({str(err)[:200]})") from None
    bad = non_finite_tensors({k: v for k, v in tensors.items() if v.dtype.kind == "f"})
    if bad:
        raise TrainingDiverged(
            f"{Path(path).name} holds non-finite values (NaN/inf) in {', '.join(bad[:5])}: the "
            "training diverged; refusing to publish it"
        )


def finish_training(
    store: ArtifactStore,
    ref: ModelRef,
    workdir: Path,
    best_state: dict,
    *,
    labels: list[str],
    history: list[dict],
    best_epoch: int,
    device: str,
    resumed: int | None,
    elapsed: float,
    seen: int,
    refit: dict | None = None,
) -> TrainedModel:
    """Save the best weights (torch tensors or numpy arrays: the same file either way), stage them in the store for
    re-runs, and describe the result (any model type)."""
    bad = non_finite_tensors(best_state)
    if bad:
        raise TrainingDiverged(
            f"training diverged (best epoch {best_epoch}): non-finite values in "
            f"{', '.join(bad[:5])}; lower train.learning_rate. Nothing was published"
        )
    weights = workdir / "weights.safetensors"
    with local_write(f"write {weights}"):
        if any(hasattr(v, "detach") for v in best_state.values()):
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in best_state.items()}, str(weights))
        else:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in best_state.items()}, str(weights))
    weights_key = stage(store, weights, run_key(ref.prefix, WEIGHTS))
    return TrainedModel(
        weights_path=str(weights),
        weights_key=weights_key,
        labels=labels,
        history=history,
        best_epoch=best_epoch,
        epochs_run=len(history),
        device=device,
        resumed_from_epoch=resumed,
        refit=refit,
        train_seconds=round(elapsed, 3),
        samples_per_second=round(seen / elapsed, 1) if elapsed > 0 else 0.0,
    )


def local_weights(trained: TrainedModel, store: ArtifactStore) -> Path:
    return local_copy(store, trained.weights_key, Path(trained.weights_path))
