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
from tasks import encoder as enc
from tasks.data import DatasetRef, local_snapshot, read_snapshot
from tasks.preprocess import FeaturesRef, features_ref, save_features
from tasks.train import make_deterministic, pick_device
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.encoder")
CODE_VERSION = hashlib.sha256(
    Path(__file__).read_bytes() + Path(enc.__file__).read_bytes()).hexdigest()[:12]


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
    rows = read_snapshot(local_snapshot(dataset, store))
    label_index = {lab: i for i, lab in enumerate(dataset.labels)}
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "validation", "test", "evaluation"):
        part = rows[rows["split"] == split]
        ids, offsets = enc.tokenize(tokenizer, part["text"].tolist(), params.model.encoder_max_length)
        if frozen:
            arrays[f"{split}_x"] = enc.embed(backbone, ids, offsets, device, log=log)
        else:
            arrays[f"{split}_ids"], arrays[f"{split}_offsets"] = ids, offsets
        arrays[f"{split}_y"] = np.asarray([label_index[lab] for lab in part["label"]], dtype=np.int64)
    return save_features(arrays, ref, store, workdir)
