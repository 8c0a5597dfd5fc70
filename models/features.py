"""Text to features: unicode normalisation, word 1..n-grams, a stable hash into buckets.

The same `encode` runs at training and at serving time, so what the model saw and what it is asked about
are encoded identically. It works on whole Arrow arrays: texts are cut at spaces by an Arrow kernel, each
distinct space-free piece is normalised, tokenised and hashed once (the rule of `tokenize`: its tokens never
hold a space, so cutting first changes nothing), and n-gram hashes are combined arithmetically in numpy:
no Python code runs per row or per n-gram. No torch here: serving images without torch import it.

Tokens (schema 3): a word is a run of letters, digits and combining marks (an apostrophe may join two runs),
any other visible character is a token of its own, and so is each character of a script written without
spaces between words (Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar), so that bigrams of those are
character bigrams, the usual features for Chinese or Japanese text, rather than one token per sentence.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import unicodedata
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex
from pydantic import BaseModel

from params.model import PreprocessParams
from trainkite.snapshot import DatasetRef, iter_snapshot, local_snapshot
from trainkite.store import ArtifactStore

CODE_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
# What `encode` produces for given params: 1 = blake2b of every n-gram's text (models made before the
# streaming pipeline; `encode_v1` still encodes them, so they serve as trained), 2 = the same tokens, each
# n-gram's hash combined from its tokens' blake2b, 3 = schema 2's hashing of the tokens above (schema 2 cut
# Hindi words at every vowel sign and kept a Chinese sentence as one token; ASCII tokens are the same).
# Recorded in features.json and the manifest; every schema still encodes, so older models serve as trained.
FEATURE_SCHEMA = 3
BATCH_ROWS = 16_384  # rows per encoded batch: 64 k rows x 2 threads held ~350 MB of temporaries at 1 M rows
# From this many rows, preprocess tokenises ASCII in compiled code: ~4 us of Python per distinct piece
# against numba's import and load (~1.5 s), which a table this size repays.
NATIVE_MIN_ROWS = 250_000

_SPACELESS = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}"
_LETTER = rf"[\w\p{{M}}--[{_SPACELESS}]]"
# \x1c-\x1f: the separators Python's str.isspace() counts as space, as schema 2 (and the native ASCII pass) did.
_TOKEN = regex.compile(
    rf"[{_SPACELESS}]\p{{M}}*|{_LETTER}+(?:'{_LETTER}+)*|[^\w\s\x1c-\x1f\p{{M}}]\p{{M}}*|\p{{M}}+", regex.V1
)
_TOKEN_V2 = re.compile(r"\w+(?:'\w+)*|[^\w\s]")  # schemas 1 and 2
_TOKENS = {1: _TOKEN_V2, 2: _TOKEN_V2, 3: _TOKEN}
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GRAM = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier: token order matters in an n-gram's hash


class FeaturesRef(BaseModel):
    key: str
    store_key: str
    labels: list[str]
    counts: dict[str, int]
    fingerprint: str


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit, so `% buckets` is uniform."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _token_hash(token: str) -> int:
    # blake2b, never hash(): Python salts str hashes per process.
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def _as_arrow(texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if isinstance(texts, pa.Array):
        return texts.cast(pa.string()) if not pa.types.is_string(texts.type) else texts
    try:
        return pa.array(texts, type=pa.string())
    except (UnicodeEncodeError, pa.ArrowInvalid):
        # Lone surrogates are not UTF-8; they get the same replacement everywhere.
        return pa.array([t.encode("utf-8", "replace").decode("utf-8") for t in texts], type=pa.string())


def _python_piece_tokens(pieces: list[str], p: PreprocessParams, schema: int) -> tuple[np.ndarray, np.ndarray]:
    # Tokens in Python (a regex per piece), hashes per distinct token: Arrow finds the distinct ones, so no Python
    # runs per token occurrence (a Chinese sentence is one piece of ~25 tokens).
    flat: list[str] = []
    lengths = []
    for piece in pieces:
        tokens = tokenize(piece, p, schema)
        flat += tokens
        lengths.append(len(tokens))
    starts = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    if not flat:
        return np.zeros(0, dtype=np.uint64), starts
    dic = pc.dictionary_encode(pa.array(flat, type=pa.string()))
    distinct = dic.dictionary.to_pylist()
    hashes = np.fromiter((_token_hash(t) for t in distinct), dtype=np.uint64, count=len(distinct))
    return hashes[dic.indices.to_numpy(zero_copy_only=False)], starts


def _piece_tokens(pieces: pa.Array, p: PreprocessParams, native: bool, schema: int) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes of each distinct piece, flat, and where each piece's hashes start (len + 1). `native`:
    ASCII pieces in one compiled pass (models/tokens_native.py, the same hashes: schemas 2 and 3 token ASCII
    alike), the rest in Python."""
    if not native:
        return _python_piece_tokens(pieces.to_pylist(), p, schema)
    from models.tokens_native import ascii_tokens  # numba: training's preprocess only, never serving

    counts, fast = ascii_tokens(pieces, p.lowercase)
    is_fast = counts >= 0
    slow = np.flatnonzero(~is_fast)
    slow_flat, slow_starts = _python_piece_tokens(pieces.take(pa.array(slow)).to_pylist(), p, schema)
    counts[slow] = np.diff(slow_starts)
    starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    flat = np.empty(int(starts[-1]), dtype=np.uint64)
    flat[ranges(starts[:-1][is_fast], counts[is_fast])[0]] = fast
    flat[ranges(starts[slow], counts[slow])[0]] = slow_flat
    return flat, starts


def ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenation of arange(s, s + c) for each (s, c), without a Python loop, and where each range starts
    in it (the offsets of the concatenation)."""
    total = int(counts.sum())
    first = np.zeros(len(counts), dtype=np.int64)
    if len(counts):
        np.cumsum(counts[:-1], out=first[1:])
    return np.repeat(starts - first, counts) + np.arange(total, dtype=np.int64), first


def row_bounds(offsets: np.ndarray, n_ids: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each text of `rows` starts in the flat ids and how many ids it has (the stored form: flat ids +
    the offset of each text). Only those rows' bounds are read: `offsets` may be a memory-mapped array of
    millions of texts, and a copy of it per batch made an epoch quadratic."""
    rows = np.asarray(rows, dtype=np.int64)
    n = len(offsets)
    starts = np.asarray(offsets[rows], dtype=np.int64)
    nxt = rows + 1
    ends = np.where(nxt < n, np.asarray(offsets[np.minimum(nxt, n - 1)], dtype=np.int64), n_ids)
    return starts, ends - starts


def piece_tokens(texts, per_piece) -> tuple[np.ndarray, np.ndarray]:
    """Every text's tokens, flat and in text order, and the text each belongs to. `per_piece(distinct pieces)`
    (an Arrow string array) gives the tokens of each distinct space-separated piece, flat, and where each
    piece's start (len + 1): no token spans a space, so the work is once per distinct piece, not per text."""
    pieces = pc.split_pattern(_as_arrow(texts), " ")
    piece_rows = pc.list_parent_indices(pieces).to_numpy(zero_copy_only=False).astype(np.int64)
    dic = pc.dictionary_encode(pc.list_flatten(pieces))
    values, start = per_piece(dic.dictionary)
    occ = dic.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.diff(start)[occ]
    return values[ranges(start[occ], counts)[0]], np.repeat(piece_rows, counts)


def encode(texts, p: PreprocessParams, schema: int = FEATURE_SCHEMA) -> tuple[np.ndarray, np.ndarray]:
    """EmbeddingBag input for `texts` (a list of str or an Arrow string array): flat bucket ids (int64) and
    the offset where each text's ids start (int64). Per text, per token in order: the 1..ngram_max-grams
    that start there."""
    ids, offsets = encode_int32(texts, p, schema=schema)
    return ids.astype(np.int64), offsets


def encode_int32(
    texts, p: PreprocessParams, native: bool = False, schema: int = FEATURE_SCHEMA
) -> tuple[np.ndarray, np.ndarray]:
    """`encode` with int32 ids (buckets are at most 2**24): the stored form. `native` tokenises ASCII in
    compiled code: the same ids, worth numba's load on large tables only (`NATIVE_MIN_ROWS`). `schema` 2
    encodes as models made before schema 3 were."""
    arr = _as_arrow(texts)
    n = len(arr)
    h, row = piece_tokens(arr, lambda pieces: _piece_tokens(pieces, p, native, schema))
    full = np.bincount(row, minlength=n).astype(np.int64) if n else np.zeros(0, dtype=np.int64)
    text_start = np.zeros(n, dtype=np.int64)
    if n:
        np.cumsum(full[:-1], out=text_start[1:])
    pos = np.arange(len(h), dtype=np.int64) - text_start[row]
    if len(h) and int(full.max()) > p.max_tokens:
        keep = pos < p.max_tokens
        h, row, pos = h[keep], row[keep], pos[keep]
    lengths = np.minimum(full, p.max_tokens)
    k_max = p.ngram_max
    # Row j of `grams`: the hashes of the n-grams that start at token j (n = 1..k_max). Token j's n-gram is
    # valid when n tokens remain in its text; masking row-major keeps each text's grams contiguous, in
    # token order (unigram, bigram, ... of token 0, then of token 1, ...).
    left = np.repeat(lengths, lengths) - pos if len(h) else np.zeros(0, dtype=np.int64)
    grams = np.empty((len(h), k_max), dtype=np.uint64)
    grams[:, 0] = h
    with np.errstate(over="ignore"):
        for k in range(1, k_max):
            grams[:-k, k] = grams[:-k, k - 1] * _GRAM + h[k:]
            grams[len(h) - k :, k] = 0
        valid = left[:, None] > np.arange(k_max)[None, :]
        salted = grams ^ np.arange(1, k_max + 1, dtype=np.uint64)[None, :]
        ids = (_mix(salted[valid]) % np.uint64(p.buckets)).astype(np.int32)
    per_text = np.zeros(n, dtype=np.int64)
    for k in range(k_max):
        per_text += np.maximum(lengths - k, 0)
    offsets = np.zeros(n, dtype=np.int64)
    if n:
        np.cumsum(per_text[:-1], out=offsets[1:])
    return ids, offsets


def featurize(text: str, p: PreprocessParams) -> list[int]:
    """One text's bucket ids (as `encode` gives them)."""
    return encode([text], p)[0].tolist()


# --- the tokens (every schema), and schema 1's n-gram hashing: older models still serve as trained ---------
def normalize(text: str, p: PreprocessParams) -> str:
    if p.unicode_form != "none":
        text = unicodedata.normalize(p.unicode_form, text)
    return text.lower() if p.lowercase else text


def tokenize(text: str, p: PreprocessParams, schema: int = FEATURE_SCHEMA) -> list[str]:
    return word_tokens(normalize(text, p), schema)[: p.max_tokens]


def word_tokens(text: str, schema: int = FEATURE_SCHEMA) -> list[str]:
    """The tokens of a normalised text. ASCII goes to the stdlib's re: every schema tokenises it alike
    (tests/test_tokens_unicode.py), and re is about 4x faster than the regex module."""
    return (_TOKEN_V2 if text.isascii() else _TOKENS[schema]).findall(text)


def bucket(gram: str, buckets: int) -> int:
    return (
        int.from_bytes(hashlib.blake2b(gram.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        % buckets
    )


def featurize_v1(text: str, p: PreprocessParams) -> list[int]:
    words = tokenize(text, p, 1)
    ids = []
    for n in range(1, p.ngram_max + 1):
        for i in range(len(words) - n + 1):
            ids.append(bucket(" ".join(words[i : i + n]) if n > 1 else words[i], p.buckets))
    return ids


def encode_v1(texts: list[str], p: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
    ids: list[int] = []
    offsets = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        offsets[i] = len(ids)
        ids.extend(featurize_v1(t, p))
    return np.asarray(ids, dtype=np.int64), offsets


def encoder_for(schema: int | None):
    """The `encode` of a model's feature schema (features.json `feature_schema`; absent = 1)."""
    schema = 1 if schema is None else schema
    if schema == 1:
        return encode_v1
    if schema in _TOKENS:
        return functools.partial(encode, schema=schema)
    raise ValueError(f"feature schema {schema} is unknown to this code (it knows 1 to {max(_TOKENS)})")


def cache_key(fingerprint: str, p: PreprocessParams, schema: int = FEATURE_SCHEMA) -> str:
    h = hashlib.sha256(f"{fingerprint}|{p.model_dump_json()}|{CODE_VERSION}|{schema}".encode())
    return h.hexdigest()[:24]


# The model kinds that read these hashed n-grams (the encoder tokenizes for itself).
NGRAM_KINDS = ("bow", "linear")


def schemas(model_type: str) -> dict[str, int]:
    """The manifest's record of what the rows and features of a new model look like (see manifest.schemas)."""
    from trainkite.snapshot import SNAPSHOT_SCHEMA

    return {"snapshot": SNAPSHOT_SCHEMA, "features": FEATURE_SCHEMA if model_type in NGRAM_KINDS else 1}


def worker_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def preprocess(
    dataset: DatasetRef,
    p: PreprocessParams,
    store: ArtifactStore,
    workdir: Path,
    *,
    batch_rows: int | None = None,
    threads: int | None = None,
    schema: int = FEATURE_SCHEMA,
    native: bool | None = None,
) -> FeaturesRef:
    """Encode every split and keep the arrays in the store's feature cache (reused across runs).

    The snapshot is read in batches, encoded on `threads` worker threads (Arrow and numpy release the
    GIL) and appended in order to one .npy file per array: the result is byte-identical whatever the batch
    size or thread count, and memory holds a few batches, not the table. An older `schema` rebuilds the
    features of a model made with it (`trainkite verify`). `native` (default: from the table's size) changes
    the speed, never the ids.
    """
    ref = features_ref(cache_key(dataset.fingerprint, p, schema), dataset)
    encoder_for(schema)  # an unknown schema is refused before any work
    if schema != 1:
        if native is None:
            native = sum(dataset.counts.values()) >= NATIVE_MIN_ROWS

        def enc(texts: pa.Array, p: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
            return encode_int32(texts, p, native, schema)

    else:

        def enc(texts: pa.Array, p: PreprocessParams) -> tuple[np.ndarray, np.ndarray]:
            return encode_v1(texts.to_pylist(), p)

    if store.exists(ref.store_key):
        return ref
    snap = local_snapshot(dataset, store)
    label_index = pa.array(dataset.labels, type=pa.string())
    out = workdir / "features"
    out.mkdir(parents=True, exist_ok=True)
    writers = {
        f"{split}_{part}": NpyAppender(out / f"{split}_{part}.npy", dtype)
        for split in SPLITS
        for part, dtype in (("ids", np.int32), ("offsets", np.int64), ("y", np.int64))
    }
    ids_so_far = dict.fromkeys(SPLITS, 0)

    def work(batch: pa.RecordBatch) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
        done = []
        split_col = batch.column(0)
        for split in pc.unique(split_col).to_pylist():
            part = batch.filter(pc.equal(split_col, split))
            ids, offsets = enc(part.column(1), p)
            y = pc.index_in(part.column(2), value_set=label_index).to_numpy(zero_copy_only=False)
            done.append((split, ids, offsets, y.astype(np.int64)))
        return done

    threads = threads or worker_threads()
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=threads) as pool:

        def drain(keep: int) -> None:
            while len(pending) > keep:
                for split, ids, offsets, y in pending.popleft().result():
                    writers[f"{split}_ids"].append(ids)
                    writers[f"{split}_offsets"].append(offsets + ids_so_far[split])
                    writers[f"{split}_y"].append(y)
                    ids_so_far[split] += len(ids)

        for batch in iter_snapshot(snap, batch_rows or BATCH_ROWS):
            pending.append(pool.submit(work, batch))
            drain(2 * threads)
        drain(0)
    for w in writers.values():
        w.close()
    pa.default_memory_pool().release_unused()  # the batches' Arrow buffers, kept by the allocator for reuse
    return publish_features(out, list(writers), ref, store)


SPLITS = ("train", "validation", "test", "evaluation")


class NpyAppender:
    """A .npy file written in pieces: the header is rewritten with the final length on close."""

    _HEADER_BYTES = 128

    def __init__(self, path: Path, dtype) -> None:
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._f.write(self._header(0))

    def _header(self, n: int) -> bytes:
        d = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (n,)}
        body = repr(d).encode("latin1")
        pad = self._HEADER_BYTES - 10 - len(body) - 1
        return b"\x93NUMPY\x01\x00" + (self._HEADER_BYTES - 10).to_bytes(2, "little") + body + b" " * pad + b"\n"

    def append(self, arr: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(arr, dtype=self.dtype).tobytes())
        self.n += len(arr)

    def close(self) -> None:
        self._f.seek(0)
        self._f.write(self._header(self.n))
        self._f.close()


def kind_features_key(fingerprint: str, params) -> str:
    """`features_key` of the kinds that read hashed n-grams (bow, linear: models/registry.py)."""
    return cache_key(fingerprint, params.preprocess)


def kind_featurize(
    dataset: DatasetRef, params, store: ArtifactStore, workdir: Path, feature_schema: int | None = None
) -> FeaturesRef:
    """`featurize` of the kinds that read hashed n-grams; `feature_schema` rebuilds an older model's (verify)."""
    params.require_resolved()  # buckets and n-grams come from the data when unset
    return preprocess(
        dataset, params.preprocess, store, workdir, schema=FEATURE_SCHEMA if feature_schema is None else feature_schema
    )


def kind_feature_config(model_type: str, params, labels: list[str]) -> dict:
    """What `features.json` says of the hashed n-grams a model reads (its scorer encodes texts by it)."""
    return {
        "model_type": model_type,
        "labels": labels,
        "preprocess": params.preprocess.model_dump(mode="json"),
        "feature_schema": FEATURE_SCHEMA,
    }


def index_key(key: str) -> str:
    """The store key of the index that features `key` are complete with."""
    return f"_cache/features/{key}/index.json"


def features_ref(key: str, dataset: DatasetRef) -> FeaturesRef:
    """Where the features for `key` live in the store's cache (any model type): one .npy per array, and an
    index.json written last that names them (no index = no features)."""
    return FeaturesRef(
        key=key,
        store_key=index_key(key),
        labels=dataset.labels,
        counts=dataset.counts,
        fingerprint=dataset.fingerprint,
    )


def publish_features(folder: Path, names: list[str], ref: FeaturesRef, store: ArtifactStore) -> FeaturesRef:
    prefix = ref.store_key.rsplit("/", 1)[0]
    for name in names:
        store.put_file(folder / f"{name}.npy", f"{prefix}/{name}.npy")
    index = {"schema": FEATURE_SCHEMA, "arrays": sorted(names)}
    store.put_bytes(json.dumps(index).encode(), ref.store_key)
    return ref


def save_features(arrays: dict[str, np.ndarray], ref: FeaturesRef, store: ArtifactStore, workdir: Path) -> FeaturesRef:
    out = workdir / "features"
    out.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(out / f"{name}.npy", arr, allow_pickle=False)
    return publish_features(out, list(arrays), ref, store)


def _open(path: Path) -> np.ndarray:
    # Copy-on-write map: pages come from the file as batches touch them; the arrays are writable for torch.
    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except ValueError:  # an empty array cannot be mapped
        return np.load(path, allow_pickle=False)


def load_features(ref: FeaturesRef, store: ArtifactStore, workdir: Path) -> dict[str, np.ndarray]:
    """The cached arrays, memory-mapped (downloaded first when the store is not a local folder)."""
    prefix = ref.store_key.rsplit("/", 1)[0]
    index = json.loads(store.get_bytes(ref.store_key))
    out: dict[str, np.ndarray] = {}
    for name in index["arrays"]:
        key = f"{prefix}/{name}.npy"
        local = store.local_path(key)
        if local is None:
            local = workdir / "features" / f"{name}.npy"
            if not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                store.download(key, local)
        out[name] = _open(local)
    return out
