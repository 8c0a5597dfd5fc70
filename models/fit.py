"""The fit loop every model kind shares: seeded, deterministic on CPU, early stopping, a checkpoint each epoch.

Checkpoints live in the artifact store (S3 in the cloud: ECS and Batch containers share no
disk), so a re-run of a crashed run resumes from the last finished epoch and ends with the
same weights as a run that never failed.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import time
from collections.abc import Callable, Iterator
from typing import Protocol
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from params.model import Params
from models.features import FeaturesRef, load_features
from trainkite.errors import TrainingDiverged
from models.trained import TrainedModel, finish_training, with_validation_in_train
from trainkite.manifest import ModelRef
from trainkite.runfiles import checkpoint_key
from trainkite.store import ArtifactStore, local_write

log = logging.getLogger("trainkite.train")
# Step-level progress for the CLI's progress bar; kept off the Prefect API and the root logger.
progress = logging.getLogger("trainkite_progress")
progress.propagate = False


def pick_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        from trainkite.errors import UserInputError

        raise UserInputError("train.device='cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@torch.no_grad()
def sgd_step(parameters: list[torch.nn.Parameter], lr: float) -> None:
    """Plain SGD, as torch.optim.SGD without momentum does it (sparse grads included).

    Written out because torch.optim imports torch._dynamo: 1.5-3 s of every training process.
    """
    for p in parameters:
        if p.grad is not None:
            p.add_(p.grad, alpha=-lr)


def _deterministic(warn_only: bool) -> None:
    # torch.use_deterministic_algorithms also imports torch._inductor (2-3 s) only to set a
    # torch.compile flag we never use; the C switch is the part that matters for eager kernels.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        setter(True, warn_only=warn_only)


def make_deterministic(seed: int, threads: int, device: str) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    torch.set_num_threads(threads)
    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # EmbeddingBag's CUDA backward has no deterministic kernel: GPU runs are tolerance-equal only.
        _deterministic(warn_only=True)
    else:
        _deterministic(warn_only=False)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _ckpt_keys(ref: ModelRef) -> tuple[str, str]:
    return checkpoint_key(ref.prefix, "last.safetensors"), checkpoint_key(ref.prefix, "last.json")


def save_checkpoint(
    store: ArtifactStore,
    ref: ModelRef,
    workdir: Path,
    model: torch.nn.Module,
    best: dict[str, torch.Tensor],
    state: dict,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """The current weights, the best ones (unless they are the current), the optimizer's moments when it has
    any, and the tracker's state: every model type's checkpoint, in the artifact store."""
    weights_key, state_key = _ckpt_keys(ref)
    tensors = {f"current.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if not state["best_is_current"]:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    if optimizer is not None:
        for idx, st in optimizer.state_dict()["state"].items():
            for name, t in st.items():
                tensors[f"optim.{idx}.{name}"] = torch.as_tensor(t).detach().cpu().contiguous()
    local = workdir / "checkpoint.safetensors"
    with local_write(f"write the checkpoint of epoch {state['epoch']} ({local})"):
        local.parent.mkdir(parents=True, exist_ok=True)
        # The state travels inside the weights file too: a process killed between the two writes leaves new
        # weights beside the previous epoch's state file, and a resume must not pair them.
        state_json = json.dumps(state)
        save_file(tensors, str(local), metadata={"trainkite_state": state_json})
    store.put_file(local, weights_key)
    # The state file is written after the weights, so a state file always has its weights.
    store.put_bytes(state_json.encode(), state_key)


def _made_with(state: dict, identity: dict, ref: ModelRef) -> bool:
    if state.get("identity") == identity:
        return True
    log.warning("ignoring checkpoint of %s: it was made with other inputs", ref.model_id)
    return False


def load_checkpoint(
    store: ArtifactStore,
    ref: ModelRef,
    workdir: Path,
    identity: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Restore `model` (and `optimizer`) from the last checkpoint made with the same inputs: (state, best
    weights), or None when there is none."""
    weights_key, state_key = _ckpt_keys(ref)
    if not store.exists(state_key):
        return None
    state = json.loads(store.get_bytes(state_key))
    if not _made_with(state, identity, ref):
        return None
    local = store.local_path(weights_key)
    if local is None:
        local = workdir / "resume.safetensors"
        store.download(weights_key, local)
    tensors = load_file(str(local))
    with safe_open(str(local), framework="pt") as f:
        paired = (f.metadata() or {}).get("trainkite_state")
    if paired is not None:
        state = json.loads(paired)  # the state these weights were written with
        if not _made_with(state, identity, ref):
            return None
    current = {k[len("current.") :]: v for k, v in tensors.items() if k.startswith("current.")}
    model.load_state_dict(current)
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    if state.get("best_is_current"):
        best = {k: v.clone() for k, v in current.items()}
    if optimizer is not None:
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        sd = optimizer.state_dict()
        sd["state"] = opt_state
        optimizer.load_state_dict(sd)
    return state, best


def resume_or_start(
    store: ArtifactStore,
    ref: ModelRef,
    workdir: Path,
    identity: dict,
    model: torch.nn.Module,
    params: Params,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[EpochTracker, int, int | None]:
    """(tracker, first epoch, epoch resumed from): from the last checkpoint made with the same inputs, which
    restores `model` and `optimizer` too, else from scratch. Every model type's trainer starts here."""
    metric = params.evaluation.primary_metric
    ck = load_checkpoint(store, ref, workdir, identity, model, optimizer)
    if ck is None:
        return EpochTracker(params.train, metric), 1, None
    state, best_state = ck
    log.info("resuming %s from the checkpoint of epoch %d", ref.model_id, state["epoch"])
    return EpochTracker(params.train, metric, state, best_state), state["epoch"] + 1, state["epoch"]


class KindTrainer(Protocol):
    """What one model kind gives the shared fit loop: its module, optimizer, and one update on a batch of rows."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer | None
    n_train: int
    n_classes: int

    def step(self, rows: np.ndarray, lr: float) -> float:
        """One update on the training rows `rows` at rate `lr`; the batch's loss summed over its rows."""

    def validate(self) -> dict:
        """Scores on the validation split (`accuracy`, `macro_f1`, ...)."""


def fit(
    make_trainer: Callable[..., KindTrainer],
    features: FeaturesRef,
    params: Params,
    store: ArtifactStore,
    ref: ModelRef,
    workdir: Path,
) -> TrainedModel:
    """The one epoch loop every model kind trains with (`make_trainer` builds the kind's trainer on the seeded generator
    and the cached features): resume from the last checkpoint, the shared batch order and
    learning-rate schedule, the divergence guard, per-epoch validation, early stopping, a checkpoint in the store,
    the best weights."""
    params.require_resolved()
    device = pick_device(params.train.device)
    gen = make_deterministic(params.train.seed, params.train.threads, device)
    arrays = load_features(features, store, workdir)
    trainer = make_trainer(params, arrays, features.labels, device, gen)
    tp = params.train
    identity = {"features": features.key, "params": params.params_hash(), "device": device}
    tracker, start_epoch, resumed = resume_or_start(
        store, ref, workdir, identity, trainer.model, params, trainer.optimizer
    )
    started = time.perf_counter()
    saved_at = started
    seen = 0
    for epoch in range(start_epoch, tp.epochs + 1):
        if tracker.stopped:
            break
        trainer.model.train()
        loss_sum, epoch_seen, lr = train_epoch(trainer, tp, epoch)
        seen += epoch_seen
        due = tracker.end_epoch(epoch, trainer.model, trainer.validate(), loss_sum / trainer.n_train, lr)
        last = tracker.stopped or epoch == tp.epochs
        if due and (last or time.perf_counter() - saved_at >= tp.checkpoint_interval_s):
            saved_at = time.perf_counter()
            save_checkpoint(
                store,
                ref,
                workdir,
                trainer.model,
                tracker.best_state,
                tracker.checkpoint_state(epoch, identity),
                trainer.optimizer,
            )
    final_state, refit = tracker.best_state, None
    if tp.refit and tracker.best_epoch:
        final_state, refit = refit_on_validation(make_trainer, params, arrays, features.labels, device, tracker)
        seen += refit["rows"] * refit["epochs"]
    elapsed = time.perf_counter() - started
    return finish_training(
        store,
        ref,
        workdir,
        final_state,
        refit=refit,
        labels=features.labels,
        history=tracker.history,
        best_epoch=tracker.best_epoch,
        device=device,
        resumed=resumed,
        elapsed=elapsed,
        seen=seen,
    )


def train_epoch(trainer: KindTrainer, tp, epoch: int, **shown) -> tuple[float, int, float]:
    """One pass over the trainer's rows in the epoch's order: (loss summed over rows, rows, last rate), with the
    divergence guard after every step. `shown` is what the progress bar says (epoch_batches)."""
    loss_sum, seen, lr = 0.0, 0, tp.learning_rate
    for rows, lr in epoch_batches(tp, trainer.n_train, epoch, **shown):
        loss_sum += trainer.step(rows, lr)
        seen += len(rows)
        check_divergence(epoch, loss_sum / seen, trainer.n_classes)
    return loss_sum, seen, lr


def refit_on_validation(
    make_trainer: Callable[..., KindTrainer],
    params: Params,
    arrays: dict[str, np.ndarray],
    labels: list[str],
    device: str,
    tracker: EpochTracker,
) -> tuple[dict[str, torch.Tensor], dict]:
    """The second fit of `train.refit`: from the same seed, on train + validation, for the epochs early stopping
    chose, under the same rate schedule (the rate it had at that epoch); its last weights are the model's.

    Nothing validates it (its validation rows are training rows now), so it is not checkpointed: a re-run
    whose first fit is checkpointed as finished runs this again, to the same weights.
    """
    tp = params.train
    gen = make_deterministic(tp.seed, tp.threads, device)
    trainer = make_trainer(params, with_validation_in_train(arrays), labels, device, gen)
    log.info("refit: %d epochs on train + validation (%d rows)", tracker.best_epoch, trainer.n_train)
    trainer.model.train()
    for epoch in range(1, tracker.best_epoch + 1):
        loss_sum, _, _ = train_epoch(trainer, tp, epoch, phase="refit", epochs_shown=tracker.best_epoch)
    state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    return state, {"epochs": tracker.best_epoch, "rows": trainer.n_train, "train_loss": loss_sum / trainer.n_train}


# A model whose mean loss per row is this many times a uniform guess's (ln of the class count) is not
# learning: its logits are wrong by margins no data set produces. Relative, so no data set tunes it.
DIVERGED_LOSS_FACTOR = 100.0


def check_divergence(epoch: int, mean_loss: float, n_classes: int) -> None:
    """Stop a training whose loss is NaN/inf or exploding; every model type's fit loop calls it each step.

    `mean_loss` is the epoch's loss per row so far (what the history records as train_loss). Raising here,
    before any checkpoint or weights file of the epoch is written, means a diverged run publishes nothing.
    """
    if not math.isfinite(mean_loss):
        raise TrainingDiverged(
            f"training diverged at epoch {epoch} (loss {mean_loss}): the weights are no longer "
            "finite numbers; lower train.learning_rate or train.weight_decay. Nothing was "
            "published"
        )
    limit = DIVERGED_LOSS_FACTOR * math.log(max(2, n_classes))
    if mean_loss > limit:
        raise TrainingDiverged(
            f"training diverged at epoch {epoch} (loss {mean_loss:.4g} per row, over "
            f"{limit:.4g} = {DIVERGED_LOSS_FACTOR:g} x a uniform guess's); lower "
            "train.learning_rate or train.batch_size. Nothing was published"
        )


def learning_rate(tp, step: int, total_steps: int) -> float:
    """The rate at 0-based `step`: linear warm-up over the first warmup_fraction of the steps, then linear
    decay to 0 at the end (no warm-up: decay from the first step, as fastText does)."""
    warmup = int(tp.warmup_fraction * total_steps)
    if step < warmup:
        return tp.learning_rate * (step + 1) / warmup
    return tp.learning_rate * max(0.0, 1.0 - (step - warmup) / max(1, total_steps - warmup))


# train.shuffle = "blocks": the rows are visited in windows of WINDOW_BLOCKS blocks of SHUFFLE_BLOCK_ROWS
# consecutive rows (a random block order, a random row order within each window), so the memory-mapped features
# in use at once are one window's (some 170 MB at 20 words a row), which `release_pages` hands back as the next
# begins, instead of a random order that leaves every page of a multi-GB file resident. The snapshot stores each
# split in a hashed order (trainkite/snapshot.py, schema 3), so a block is a random sample of the split and a window
# a random sample of the epoch; up to one window of rows, the order is a uniform permutation like "rows". Over a
# snapshot sorted by text (schema 2) similar texts shared blocks, which cost 1.35 points at 10 M rows.
SHUFFLE_BLOCK_ROWS = 1024
WINDOW_BLOCKS = 1024
WINDOW_ROWS = SHUFFLE_BLOCK_ROWS * WINDOW_BLOCKS


def epoch_order(tp, n: int, epoch: int) -> np.ndarray:
    """One epoch's row order: a seeded permutation of all rows, or of windows of blocks (`train.shuffle`)."""
    eg = torch.Generator()
    eg.manual_seed(tp.seed * 1000 + epoch)
    if tp.shuffle != "blocks":
        return torch.randperm(n, generator=eg).numpy()
    # The partial last block, if any, goes last: every window but the last is then WINDOW_ROWS rows, so a
    # trainer releasing pages every WINDOW_ROWS rows releases whole windows.
    full = n // SHUFFLE_BLOCK_ROWS
    blocks = torch.randperm(full, generator=eg).numpy()
    if n % SHUFFLE_BLOCK_ROWS:
        blocks = np.append(blocks, full)
    windows = []
    for w in range(0, len(blocks), WINDOW_BLOCKS):
        rows = np.concatenate(
            [
                np.arange(b * SHUFFLE_BLOCK_ROWS, min(n, (b + 1) * SHUFFLE_BLOCK_ROWS))
                for b in blocks[w : w + WINDOW_BLOCKS]
            ]
        )
        windows.append(rows[torch.randperm(len(rows), generator=eg).numpy()])
    return np.concatenate(windows) if windows else np.zeros(0, dtype=np.int64)


def release_pages(*arrays: np.ndarray) -> None:
    """Drop the pages of memory-mapped arrays from this process (they stay in the page cache; the next touch
    maps them again): what bounds RSS when a training walks a feature file larger than it needs at once."""
    for a in arrays:
        mm = getattr(a, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_DONTNEED)


def epoch_batches(
    tp, n: int, epoch: int, phase: str = "train", epochs_shown: int | None = None
) -> Iterator[tuple[np.ndarray, float]]:
    """One epoch's batches (row indices) with their learning rate, for every model type.

    One generator per epoch: a resumed run shuffles exactly like an uninterrupted one. The rate decays
    linearly to 0 over the whole run, after a linear warm-up over `warmup_fraction` of it. Progress is
    reported after each 50th step and the last, as `phase` epoch of `epochs_shown` (the refit's own count).
    """
    order = epoch_order(tp, n, epoch)
    steps_per_epoch = max(1, -(-n // tp.batch_size))
    total_steps = steps_per_epoch * tp.epochs
    for b in range(steps_per_epoch):
        lr = learning_rate(tp, (epoch - 1) * steps_per_epoch + b, total_steps)
        yield order[b * tp.batch_size : (b + 1) * tp.batch_size], lr
        if b % 50 == 0 or b == steps_per_epoch - 1:
            progress.info(
                "step",
                extra={
                    "trainkite_progress": {
                        "phase": phase,
                        "epoch": epoch,
                        "epochs": epochs_shown or tp.epochs,
                        "step": b + 1,
                        "steps": steps_per_epoch,
                    }
                },
            )


class EpochTracker:
    """Per-epoch record, best weights and early stopping: the same rules for every model type."""

    def __init__(self, tp, metric: str, state: dict | None = None, best_state: dict | None = None):
        self.tp, self.metric = tp, metric
        self.history: list[dict] = state["history"] if state else []
        self.best_metric: float = state["best_metric"] if state else -1.0  # epoch 1 always improves on -1
        self.best_epoch: int = state["best_epoch"] if state else 0
        self.best_state: dict[str, torch.Tensor] = best_state or {}
        self.stopped = bool(state and state.get("stopped"))

    def end_epoch(self, epoch: int, model: torch.nn.Module, val: dict, train_loss: float, lr: float) -> bool:
        """Record the epoch; True when a checkpoint is due."""
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
            "lr": lr,
        }
        self.history.append(row)
        improved = val[self.metric] > self.best_metric
        if improved:
            self.best_metric, self.best_epoch = val[self.metric], epoch
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        tp = self.tp
        self.stopped = bool(tp.patience) and epoch - self.best_epoch >= tp.patience
        log.info(
            "epoch %d/%d  loss %.4f  val_accuracy %.4f  val_macro_f1 %.4f%s",
            epoch,
            tp.epochs,
            train_loss,
            val["accuracy"],
            val["macro_f1"],
            "  (best)" if improved else "",
        )
        if self.stopped:
            log.info(
                "early stopping at epoch %d (best %d): no %s improvement for %d epochs",
                epoch,
                self.best_epoch,
                self.metric,
                tp.patience,
            )
        return epoch % tp.checkpoint_every == 0 or self.stopped or epoch == tp.epochs

    def checkpoint_state(self, epoch: int, identity: dict) -> dict:
        return {
            "epoch": epoch,
            "history": self.history,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "identity": identity,
            "stopped": self.stopped,
            "best_is_current": self.best_epoch == epoch,
        }
