"""The `bow` model: fastText-style mean of hashed n-gram embeddings, then a linear layer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class BowClassifier(nn.Module):
    def __init__(self, buckets: int, dim: int, n_classes: int):
        super().__init__()
        # sparse=True: one step touches a few hundred rows of a table with up to millions.
        # _weight=empty skips the default N(0,1) init of a table that reset_parameters or a
        # state dict overwrites anyway (seconds for a 2M-row table).
        self.embedding = nn.EmbeddingBag(buckets, dim, mode="mean", sparse=True,
                                         _weight=torch.empty(buckets, dim))
        self.fc = nn.Linear(dim, n_classes)

    def reset_parameters(self, generator: torch.Generator) -> None:
        dim = self.embedding.embedding_dim
        with torch.no_grad():
            self.embedding.weight.uniform_(-1.0 / dim, 1.0 / dim, generator=generator)
            self.fc.weight.zero_()
            self.fc.bias.zero_()

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(ids, offsets))


def batch_slices(offsets: np.ndarray, n_ids: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gather the ids of `rows` (texts) into one flat array + offsets for EmbeddingBag."""
    # Only the rows' own bounds are read: `offsets` may be a memory-mapped array of millions of texts.
    n = len(offsets)
    starts = np.asarray(offsets[rows], dtype=np.int64)
    nxt = rows + 1
    ends = np.where(nxt < n, np.asarray(offsets[np.minimum(nxt, n - 1)], dtype=np.int64), n_ids)
    lengths = ends - starts
    new_offsets = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(lengths[:-1], out=new_offsets[1:])
    # Vectorised ranges: position i of text r maps to starts[r] + i.
    idx = np.repeat(starts - new_offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)
    return idx, new_offsets


@torch.inference_mode()
def predict_proba(model: BowClassifier, ids: np.ndarray, offsets: np.ndarray, batch: int = 4096,
                  device: str = "cpu") -> np.ndarray:
    if model.training:  # eval() walks every submodule: a tenth of a one-text request
        model.eval()
    n = len(offsets)
    out = []
    for start in range(0, n, batch):
        if n <= batch:  # one batch (every serving request): the arrays as they are
            x, offs = ids, offsets
        else:
            idx, offs = batch_slices(offsets, len(ids), np.arange(start, min(n, start + batch)))
            x = ids[idx]
        # Stored ids are int32; EmbeddingBag wants ids and offsets of one dtype.
        x = np.asarray(x, dtype=np.int64)
        logits = model(torch.from_numpy(x).to(device), torch.from_numpy(np.asarray(offs, dtype=np.int64)).to(device))
        out.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.fc.out_features), dtype=np.float32)
