"""Features of the `encoder` model: word-piece ids (finetune), or the frozen encoder's embedding of each text.

Frozen mode pays for the encoder once per text here; every training that shares the data and
these settings (a sweep over head learning rates, a re-run) reuses the cached embeddings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from params.model import Params
from models import encoder as enc
from trainkite.snapshot import SPLITS, DatasetRef, iter_snapshot, local_snapshot
from models.features import FeaturesRef, features_ref, save_features
from models.fit import make_deterministic, pick_device
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.encoder")
CODE_VERSION = hashlib.sha256(Path(__file__).read_bytes() + Path(enc.__file__).read_bytes()).hexdigest()[:12]


def cache_key(fingerprint: str, params: Params) -> str:
    spec = json.dumps(params.preprocess_key(), sort_keys=True)
    h = hashlib.sha256(f"{fingerprint}|{spec}|{enc.PACKAGE}=={enc.installed_version()}|{CODE_VERSION}".encode())
    return h.hexdigest()[:24]


def featurize(dataset: DatasetRef, params: Params, store: ArtifactStore, workdir: Path) -> FeaturesRef:
    enc.require()
    ref = features_ref(cache_key(dataset.fingerprint, params), dataset)
    if store.exists(ref.store_key):
        return ref
    frozen = params.model.encoder_mode == "frozen"
    device = pick_device(params.train.device)
    make_deterministic(params.train.seed, params.train.threads, device)
    tokenizer, backbone = enc.load_backbone()
    label_index = {lab: i for i, lab in enumerate(dataset.labels)}
    arrays: dict[str, np.ndarray] = {}
    for split, ids, offsets, labels in _tokenized_splits(
        local_snapshot(dataset, store), tokenizer, params.model.encoder_max_length
    ):
        if frozen:
            arrays[f"{split}_x"] = enc.embed(backbone, ids, offsets, device, log=log)
        else:
            arrays[f"{split}_ids"], arrays[f"{split}_offsets"] = ids, offsets
        arrays[f"{split}_y"] = np.asarray([label_index[lab] for lab in labels], dtype=np.int64)
    return save_features(arrays, ref, store, workdir)


def _tokenized_splits(snapshot: Path, tokenizer, max_length: int):
    """(split, ids, offsets, labels) per split: the snapshot read and tokenised batch by batch (the fast
    tokenizer's own batching), never as one DataFrame. A text's ids do not depend on its batch."""
    import pyarrow.compute as pc

    parts: dict[str, list] = {s: [] for s in SPLITS}
    for batch in iter_snapshot(snapshot):
        split_col = batch.column(0)
        for split in pc.unique(split_col).to_pylist():
            part = batch.filter(pc.equal(split_col, split))
            ids, offsets = enc.tokenize(tokenizer, part.column(1).to_pylist(), max_length)
            parts[split].append((ids, offsets, part.column(2).to_pylist()))
    for split in SPLITS:
        chunks = parts.pop(split)
        if not chunks:
            yield split, np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64), []
            continue
        starts = np.cumsum([0] + [len(c[0]) for c in chunks[:-1]])
        yield (
            split,
            np.concatenate([c[0] for c in chunks]),
            np.concatenate([c[1] + start for c, start in zip(chunks, starts, strict=True)]),
            [lab for c in chunks for lab in c[2]],
        )
