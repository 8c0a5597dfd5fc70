"""bow's training update on the CPU as one compiled loop (numba): the math of `BowTrainer`'s torch step.

Per batch: each text's mean embedding, the linear layer, softmax cross-entropy (the batch mean, + L2 on the
linear weights); each embedding row then steps by the mean of its own occurrences' gradients (scaled by
-lr * batch / occurrences) and the linear layer by plain SGD at `fc_lr`, both from the gradients of the
weights the batch was scored with. The torch step spends most of its time in per-call overhead (a few
hundred ns per id where the arithmetic is a few ns); this loop is one call per batch.

It runs on one thread in a fixed order, so the same rows in the same order give the same float32 weights on
any machine with the same instruction set, whatever `train.threads` is. It rounds differently from the torch
step (summation order), so a model records which one trained it (`train.kernel`).
"""

from __future__ import annotations

import math

import numpy as np
import numba


def _jit(fn):
    # The compiled code is cached next to this file, or in numba's user-wide cache; where neither can be
    # written (a read-only image without a home) it is compiled once per process instead (about 2 s).
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:
        return numba.njit(nogil=True)(fn)


@_jit
def _step(emb, fc_w, fc_b, ids, offsets, y, rows, lr, fc_lr, weight_decay, slot):  # pragma: no cover - compiled
    batch, dim, n_classes = rows.shape[0], emb.shape[1], fc_w.shape[0]
    n_ids, n_texts = ids.shape[0], offsets.shape[0]
    total = 0
    for k in range(batch):
        r = rows[k]
        total += (offsets[r + 1] if r + 1 < n_texts else n_ids) - offsets[r]
    # The batch's distinct rows, in order of first occurrence: `slot[id]` is an id's place in `acc` (-1: none).
    acc = np.zeros((total, dim), np.float32)
    uniq = np.empty(total, np.int64)
    count = np.zeros(total, np.int32)
    n_uniq = 0
    g_w = np.zeros((n_classes, dim), np.float32)
    g_b = np.zeros(n_classes, np.float32)
    h = np.empty(dim, np.float32)
    z = np.empty(n_classes, np.float32)
    dh = np.empty(dim, np.float32)
    loss = 0.0
    for k in range(batch):
        r = rows[k]
        start = offsets[r]
        end = offsets[r + 1] if r + 1 < n_texts else n_ids
        length = end - start
        h[:] = 0.0
        inv = np.float32(1.0 / length) if length else np.float32(0.0)
        for j in range(start, end):
            e = emb[ids[j]]
            for d in range(dim):
                h[d] += e[d]
        for d in range(dim):
            h[d] *= inv
        top = -np.inf
        for c in range(n_classes):
            v = fc_b[c]
            for d in range(dim):
                v += fc_w[c, d] * h[d]
            z[c] = v
            top = max(top, v)
        total_p = 0.0
        for c in range(n_classes):
            z[c] = math.exp(z[c] - top)
            total_p += z[c]
        target = y[r]
        loss -= math.log(z[target] / total_p)
        for c in range(n_classes):
            g = np.float32((z[c] / total_p - (1.0 if c == target else 0.0)) / batch)
            z[c] = g
            g_b[c] += g
            for d in range(dim):
                g_w[c, d] += g * h[d]
        if length == 0:
            continue  # an empty bag scores by the bias alone and has no embedding gradient
        for d in range(dim):
            v = np.float32(0.0)
            for c in range(n_classes):
                v += fc_w[c, d] * z[c]
            dh[d] = v * inv
        for j in range(start, end):
            i = ids[j]
            s = slot[i]
            if s < 0:
                s = n_uniq
                slot[i] = s
                uniq[s] = i
                n_uniq += 1
            count[s] += 1
            for d in range(dim):
                acc[s, d] += dh[d]
    for s in range(n_uniq):
        i = uniq[s]
        scale = np.float32(-lr * batch / count[s])
        for d in range(dim):
            emb[i, d] += acc[s, d] * scale
        slot[i] = -1
    for c in range(n_classes):
        for d in range(dim):
            fc_w[c, d] -= np.float32(fc_lr) * (g_w[c, d] + np.float32(2.0 * weight_decay) * fc_w[c, d])
        fc_b[c] -= np.float32(fc_lr) * g_b[c]
    return loss


class NativeStep:
    """The compiled update over one model's weights (numpy views that share the torch tensors' memory)."""

    def __init__(self, buckets: int):
        self.slot = np.full(buckets, -1, dtype=np.int32)

    def __call__(self, emb, fc_w, fc_b, ids, offsets, y, rows, lr: float, fc_lr: float, weight_decay: float) -> float:
        """Update the weights in place on the training rows `rows`; the batch's cross-entropy summed over them."""
        return _step(
            emb,
            fc_w,
            fc_b,
            np.asarray(ids),
            np.asarray(offsets),
            np.asarray(y),
            np.asarray(rows, dtype=np.int64),
            float(lr),
            float(fc_lr),
            float(weight_decay),
            self.slot,
        )
