"""Train the `encoder` model: the head alone on cached embeddings (frozen) or the whole encoder (finetune).

Same contract as bow's trainer (models/fit.py): seeded, deterministic on CPU, early stopping on
the primary metric, a checkpoint in the artifact store every epoch so a re-run resumes. The
checkpoint also holds AdamW's moments, without which a resumed run would drift from one that
never stopped. Fine-tuning is meant for a GPU (bf16 autocast with train.amp); dropout makes it
tolerance-equal rather than bit-identical across runs there.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from params.model import Params
from models import encoder as enc
from models.metrics import score
from models.features import FeaturesRef, load_features
from models.fit import (
    TrainedModel,
    check_divergence,
    epoch_batches,
    finish_training,
    local_weights,
    make_deterministic,
    pick_device,
    resume_or_start,
    save_checkpoint,
)
from trainkite.manifest import ModelRef
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.train")


def is_frozen(params: Params) -> bool:
    return params.model.encoder_mode == "frozen"


def build_model(params: Params, n_classes: int, dim: int, generator: torch.Generator,
                train_x: np.ndarray | None = None) -> nn.Module:
    if is_frozen(params):
        model: nn.Module = enc.Head(dim, n_classes, enc.POOLING["frozen"])
        if train_x is not None:
            model.standardize_on(train_x)
        head = model.head
    else:
        _, backbone = enc.load_backbone()
        model = enc.EncoderClassifier(backbone, n_classes)
        head = model.head
    with torch.no_grad():
        head.weight.normal_(0.0, 0.02, generator=generator)
        head.bias.zero_()
    return model


def _inputs(arrays: dict[str, np.ndarray], split: str, rows: np.ndarray, frozen: bool, device: str):
    if frozen:
        return (torch.from_numpy(arrays[f"{split}_x"][rows]).to(device),)
    ids, mask = enc.pad_batch(arrays[f"{split}_ids"], arrays[f"{split}_offsets"], rows)
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def split_probs(model: nn.Module, arrays: dict[str, np.ndarray], split: str, frozen: bool,
                device: str) -> np.ndarray:
    model.eval()
    if frozen:
        x = torch.from_numpy(arrays[f"{split}_x"]).to(device)
        return torch.softmax(model(x).float(), dim=-1).cpu().numpy()
    n_classes = model.head.out_features
    return enc.run_batches(lambda x, m: torch.softmax(model(x, m).float(), dim=-1), arrays[f"{split}_ids"],
                           arrays[f"{split}_offsets"], n_classes, device)


def train_encoder(features: FeaturesRef, params: Params, store: ArtifactStore, ref: ModelRef,
                  workdir: Path) -> TrainedModel:
    params.require_resolved()
    tp = params.train
    frozen = is_frozen(params)
    device = pick_device(tp.device)
    gen = make_deterministic(tp.seed, tp.threads, device)
    arrays = load_features(features, store, workdir)
    n_classes = len(features.labels)
    dim = arrays["train_x"].shape[1] if frozen else 0
    model = build_model(params, n_classes, dim, gen, arrays["train_x"] if frozen else None).to(device)
    y = arrays["train_y"]
    n = len(y)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tp.learning_rate,
                                  weight_decay=tp.weight_decay)
    identity = {"features": features.key, "params": params.params_hash(), "device": device}

    tracker, start_epoch, resumed = resume_or_start(store, ref, workdir, identity, model, params, optimizer)

    use_amp = device == "cuda" and tp.amp
    started = time.perf_counter()
    seen = 0
    for epoch in range(start_epoch, tp.epochs + 1):
        if tracker.stopped:
            break
        model.train()
        loss_sum, lr, epoch_seen = 0.0, tp.learning_rate, 0
        for rows, lr in epoch_batches(tp, n, epoch):
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = model(*_inputs(arrays, "train", rows, frozen, device))
            target = torch.from_numpy(y[rows]).to(device)
            # The per-example mean, as bow's: the step does not grow with the batch size.
            loss = nn.functional.cross_entropy(logits.float(), target, reduction="mean")
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(rows)
            seen += len(rows)
            epoch_seen += len(rows)
            check_divergence(epoch, loss_sum / epoch_seen, n_classes)
        val = score(arrays["validation_y"], split_probs(model, arrays, "validation", frozen, device),
                    features.labels)
        if tracker.end_epoch(epoch, model, val, loss_sum / n, lr):
            save_checkpoint(store, ref, workdir, model, tracker.best_state, tracker.checkpoint_state(epoch, identity),
                            optimizer)
    elapsed = time.perf_counter() - started

    return finish_training(store, ref, workdir, tracker.best_state, labels=features.labels, history=tracker.history,
                           best_epoch=tracker.best_epoch, device=device, resumed=resumed, elapsed=elapsed, seen=seen)


def load_trained(trained: TrainedModel, params: Params, arrays: dict[str, np.ndarray], n_classes: int,
                 store: ArtifactStore) -> nn.Module:
    """The best weights of a finished training, ready to score the cached features."""
    frozen = is_frozen(params)
    dim = arrays["train_x"].shape[1] if frozen else 0
    model = build_model(params, n_classes, dim, torch.Generator())
    model.load_state_dict(load_file(str(local_weights(trained, store))))
    return model.eval()
