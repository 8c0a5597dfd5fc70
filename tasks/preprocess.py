"""Text to features: unicode normalisation, word 1..n-grams, a stable hash into buckets.

The same `featurize` runs at training and at serving time, so what the model saw and what
it is asked about are encoded identically.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from params.model import PreprocessParams
from tasks.data import DatasetRef, local_snapshot, read_snapshot
from trainkite.store import ArtifactStore

_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
CODE_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


class FeaturesRef(BaseModel):
    key: str
    store_key: str
    labels: list[str]
    counts: dict[str, int]
    fingerprint: str


def normalize(text: str, p: PreprocessParams) -> str:
    if p.unicode_form != "none":
        text = unicodedata.normalize(p.unicode_form, text)
    return text.lower() if p.lowercase else text


def tokenize(text: str, p: PreprocessParams) -> list[str]:
    return _TOKEN.findall(normalize(text, p))[: p.max_tokens]


def bucket(gram: str, buckets: int) -> int:
    # blake2b, never hash(): Python salts str hashes per process.
    # surrogatepass: a lone surrogate (legal in JSON, not in UTF-8) must hash, not crash.
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little") % buckets


def featurize(text: str, p: PreprocessParams) -> list[int]:
    words = tokenize(text, p)
    ids = []
    for n in range(1, p.ngram_max + 1):
        for i in range(len(words) - n + 1):
            ids.append(bucket(" ".join(words[i : i + n]) if n > 1 else words[i], p.buckets))
    return ids


def encode(texts: list[str], p: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    """EmbeddingBag input: flat ids and the offset of each text."""
    ids: list[int] = []
    offsets = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        offsets[i] = len(ids)
        ids.extend(featurize(t, p))
    return np.asarray(ids, dtype=np.int64), offsets


def cache_key(fingerprint: str, p: PreprocessParams) -> str:
    h = hashlib.sha256(f"{fingerprint}|{p.model_dump_json()}|{CODE_VERSION}".encode())
    return h.hexdigest()[:24]


def preprocess(dataset: DatasetRef, p: PreprocessParams, store: ArtifactStore, workdir: Path) -> FeaturesRef:
    """Encode every split and keep the arrays in the store's feature cache (reused across runs)."""
    ref = features_ref(cache_key(dataset.fingerprint, p), dataset)
    if store.exists(ref.store_key):
        return ref
    rows = read_snapshot(local_snapshot(dataset, store))
    label_index = {lab: i for i, lab in enumerate(dataset.labels)}
    arrays: dict[str, np.ndarray] = {}
    for split in ("train", "validation", "test", "evaluation"):
        part = rows[rows["split"] == split]
        ids, offsets = encode(part["text"].tolist(), p)
        arrays[f"{split}_ids"] = ids
        arrays[f"{split}_offsets"] = offsets
        arrays[f"{split}_y"] = np.asarray([label_index[lab] for lab in part["label"]], dtype=np.int64)
    return save_features(arrays, ref, store, workdir)


def features_ref(key: str, dataset: DatasetRef) -> FeaturesRef:
    """Where the features for `key` live in the store's cache (any model type)."""
    return FeaturesRef(key=key, store_key=f"_cache/features/{key}.npz", labels=dataset.labels,
                       counts=dataset.counts, fingerprint=dataset.fingerprint)


def save_features(arrays: dict[str, np.ndarray], ref: FeaturesRef, store: ArtifactStore, workdir: Path) -> FeaturesRef:
    out = workdir / "features.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    store.put_file(out, ref.store_key)
    return ref


def load_features(ref: FeaturesRef, store: ArtifactStore, workdir: Path) -> dict[str, np.ndarray]:
    local = store.local_path(ref.store_key)
    if local is None:
        local = workdir / "features.npz"
        if not local.exists():
            store.download(ref.store_key, local)
    with np.load(local, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
