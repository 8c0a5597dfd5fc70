"""Defaults that adapt to the data: the unset parameters, resolved once after fetch from the data's statistics.

A key the user set (params file, `--set`, the Prefect UI form, Buildkite, `--params-json`) is never
touched; a key left unset (None in `Params`) gets a value from a rule over what the data shows: rows,
label count, vocabulary, text length. The rules are written in terms of those statistics only, so no
dataset is special; `benchmarks/quality_matrix.py` checks them across every labelled set we have.

The resolved `Params` has no unset key left: it is what preprocess, train, evaluate and publish use, what
`params.json`, the manifest and W&B store, and what `trainkite verify` rebuilds from (resolving an already
resolved `Params` returns it unchanged, and the statistics of the same snapshot are the same, so a resumed
run resolves the same values). Plain code: no Prefect, no CLI.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from models.features import piece_tokens, word_tokens
from params.model import AUTO_KEYS, Params, ParamsError, validate_params
from trainkite.snapshot import iter_snapshot, split_text_array

# Statistics read at most this many training texts (a deterministic stride sample); beyond that the
# vocabulary is extrapolated (Heaps' law), which is all the bucket rule needs.
STATS_SAMPLE_ROWS = 50_000


class DataStats(BaseModel):
    """What the rules read: cheap to compute from the snapshot, the same for the same rows."""

    train_rows: int
    validation_rows: int
    labels: int
    vocabulary: int  # distinct lowercased words in the training split (estimated past the sample)
    ngrams: int  # distinct word 1..ngram_max-grams in the training split (estimated past the sample)
    mean_tokens: float  # words per training text
    sampled_rows: int


def _heaps(count: int, sampled: int, total: int) -> int:
    """Distinct items in `total` rows from `count` seen in `sampled` of them (Heaps' law, beta ~0.6)."""
    if sampled >= total or sampled == 0:
        return count
    return int(count * (total / sampled) ** 0.6)


def _token_sequences(sample) -> tuple[np.ndarray, np.ndarray, int]:
    """Every sampled text's lowercased word tokens as dense ids, flat and in text order, the text each one
    belongs to, and the count of distinct tokens: the features' `word_tokens(text.lower())` per text."""
    vocab: dict[str, int] = {}

    def word_ids(pieces: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        flat: list[int] = []
        starts = [0]
        for piece in pieces.to_pylist():
            flat.extend(vocab.setdefault(tok, len(vocab)) for tok in word_tokens(piece.lower()))
            starts.append(len(flat))
        return np.asarray(flat, dtype=np.int64), np.asarray(starts, dtype=np.int64)

    texts = sample if isinstance(sample, pa.Array) else [str(t) for t in sample]
    tokens, rows = piece_tokens(texts, word_ids)
    return tokens, rows, len(vocab)


def _distinct_grams(tokens: np.ndarray, rows: np.ndarray, vocabulary: int, ngram_max: int) -> int:
    """Distinct 2..ngram_max-grams within texts. A k-gram is its (k-1)-gram's dense id and its last token,
    renumbered densely at each k, so the keys never overflow whatever k."""
    total = 0
    gram = tokens
    for k in range(2, ngram_max + 1):
        n = len(tokens) - k + 1
        if n <= 0:
            break
        key = gram[:n] * max(1, vocabulary) + tokens[k - 1 :]
        within = rows[k - 1 :] == rows[:n]  # rows ascend: first and last token in one text
        total += len(np.unique(key[within]))
        if k < ngram_max:
            gram = np.unique(key, return_inverse=True)[1].astype(np.int64)
    return total


def _stats(
    sample, train_rows: int, validation_rows: int, labels: int, ngram_max: int, max_tokens: int | None = None
) -> DataStats:
    """The statistics from a stride sample of the training texts and the split counts. With `max_tokens`, of the
    texts as the features see them: cut at that many tokens (3,000 documents of 1,500 words counted whole came to
    9 M n-gram ids, over the linear limit, where the features hold 1.5 M; bow, chosen instead, learnt nothing)."""
    tokens, rows, words = _token_sequences(sample)
    if max_tokens is not None and len(tokens):
        first = np.searchsorted(rows, rows, side="left")  # rows ascend: each token's text starts there
        kept = np.arange(len(tokens)) - first < max_tokens
        if not kept.all():
            tokens, rows = tokens[kept], rows[kept]
            tokens = np.unique(tokens, return_inverse=True)[1].astype(np.int64)
            words = int(tokens.max()) + 1 if len(tokens) else 0
    grams = _distinct_grams(tokens, rows, words, ngram_max)
    m = len(sample)
    return DataStats(
        train_rows=train_rows,
        validation_rows=validation_rows,
        labels=labels,
        vocabulary=_heaps(words, m, train_rows),
        ngrams=_heaps(words + grams, m, train_rows),
        mean_tokens=round(len(tokens) / m, 3) if m else 0.0,
        sampled_rows=m,
    )


def _stride(n: int) -> int:
    return max(1, -(-n // STATS_SAMPLE_ROWS))


def stats_of_rows(rows: pd.DataFrame, ngram_max: int, max_tokens: int | None = None) -> DataStats:
    """Statistics of a snapshot's rows (columns split, text, label) held in memory."""
    train = rows.loc[rows["split"] == "train", "text"]
    n = len(train)
    labels = rows.loc[rows["split"] != "evaluation", "label"].nunique()
    validation = int((rows["split"] == "validation").sum())
    return _stats(train.iloc[:: _stride(n)].tolist(), n, validation, int(labels), ngram_max, max_tokens)


def dataset_stats(
    snapshot: str | Path, ngram_max: int, labels: int | None = None, max_tokens: int | None = None
) -> DataStats:
    """Statistics of a fetched dataset, from its snapshot file, read in Arrow batches: memory holds the
    sample, never the table. `labels` (the declared label count) wins over the count seen; `max_tokens`
    (preprocess.max_tokens) cuts each text where the features cut it."""
    counts = {"train": 0, "validation": 0}
    seen_labels: set[str] = set()
    for batch in iter_snapshot(snapshot, columns=("split", "label")):
        split = batch.column(0)
        for name in counts:
            counts[name] += pc.sum(pc.equal(split, name)).as_py() or 0
        if labels is None:
            kept = pc.filter(batch.column(1), pc.not_equal(split, "evaluation"))
            seen_labels.update(pc.unique(kept).to_pylist())
    n = counts["train"]
    sample = split_text_array(snapshot, "train", every=_stride(n))
    pa.default_memory_pool().release_unused()  # the batches' buffers, which Arrow's allocator keeps for reuse
    return _stats(sample, n, counts["validation"], labels or len(seen_labels), ngram_max, max_tokens)


def _pow2_at_least(x: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1.0, x))))


def _pow2_at_most(x: float) -> int:
    return 1 << max(0, math.floor(math.log2(max(1.0, x))))


def _clip(x, lo, hi):
    return max(lo, min(hi, x))


# Examples a training should see in all (epochs x rows), from which the epochs follow: large data needs few
# passes (SGD sees every n-gram often), small data many (a few hundred rows need dozens of passes to converge).
BOW_EXAMPLES = 250_000
ENCODER_EXAMPLES = 600_000
# Up to this many training rows a run refits on train + validation once early stopping has chosen the epoch:
# there a tenth more rows is worth points (TF-IDF + LR loses 3-6 on the small sets when it gets three
# quarters of them) and the second fit costs seconds; beyond it the rows add little and the fit is the run.
REFIT_MAX_ROWS = 100_000


# At most about this many n-gram ids per batch. bow steps each embedding row by the mean of its occurrences in the
# batch, so a row that recurs within it learns at a fraction of the rate: long texts share their n-grams across a
# batch far more than short ones. Measured on 20,000 documents of 400 words (511 ids each, four topics): batch 8, 16
# and 32 learn (99.1-99.2 %), 64 and the 128 that the row count alone gave learn nothing (24.5 %); 20-word texts
# (41 ids) learn at 256 (BENCHMARKS.md, First runs).
BOW_IDS_PER_BATCH = 16_384
BOW_RATE_CLASSES = 100


def bow_rules(st: DataStats, ngram_max: int = 2) -> dict[str, int | float | bool]:
    n = st.train_rows
    # Embedding rows: eight times the distinct n-grams (about 6 % of them then share a row), a power of two.
    buckets = _clip(_pow2_at_least(8 * st.ngrams), 2**14, 2**21)
    # One linear map of rank min(dim, labels) on top: a few dimensions per class is all it can use.
    dim = _clip(_pow2_at_least(8 * st.labels), 16, 64)
    # At most 2^24 table entries (64 MiB of float32): each epoch reads, updates and checkpoints the table.
    buckets = max(2**14, min(buckets, 2**24 // dim))
    # At least about 100 steps per epoch: small data gets small batches; long texts too (BOW_IDS_PER_BATCH).
    ids_per_text = max(1.0, st.mean_tokens * ngram_max)
    batch = _clip(_pow2_at_most(min(n / 100, BOW_IDS_PER_BATCH / ids_per_text)), 8, 256)
    epochs = _clip(math.ceil(BOW_EXAMPLES / max(1, n)), 5, 50)
    # The embedding rows' per-example rate, whatever the batch (bow's update: each row steps by the mean of its
    # own occurrences, the linear layer at this rate x sqrt(batch)); one value across 600 to 100 k rows
    # (BENCHMARKS.md, quality matrix). Past BOW_RATE_CLASSES classes it grows with them: the linear layer's batch-mean
    # gradient gives each class row about 1/classes of a step, so 500 and 1,000 intents of 18-20 rows learnt nothing
    # at 0.5 and everything at 2.5 and 5 (200 still learnt at 0.5; BENCHMARKS.md, First runs).
    lr = 0.5 * _clip(st.labels / BOW_RATE_CLASSES, 1.0, 10.0)
    patience = 0 if epochs <= 5 else _clip(epochs // 3, 3, 10)
    return {
        "preprocess.buckets": buckets,
        "model.embedding_dim": dim,
        "train.batch_size": batch,
        "train.epochs": epochs,
        "train.learning_rate": lr,
        "train.warmup_fraction": 0.0,
        "train.patience": patience,
        "train.refit": n <= REFIT_MAX_ROWS,
    }


def encoder_rules(st: DataStats, mode: str) -> dict[str, int | float | bool]:
    n = st.train_rows
    if mode == "finetune":
        # The recipe of the encoder benchmarks: AdamW 3e-5, a short warm-up, few passes over large data.
        batch = 32
        epochs = _clip(math.ceil(100_000 / max(1, n)), 2, 10)
        return {
            "train.batch_size": batch,
            "train.epochs": epochs,
            "train.learning_rate": 3e-5,
            "train.warmup_fraction": 0.06,
            "train.patience": 0 if epochs <= 3 else 2,
            # A second fine-tuning is another hour of GPU: the validation rows stay a validation split.
            "train.refit": False,
        }
    batch = _clip(_pow2_at_most(n / 200), 8, 64)
    epochs = _clip(math.ceil(ENCODER_EXAMPLES / max(1, n)), 10, 100)
    return {
        "train.batch_size": batch,
        "train.epochs": epochs,
        "train.learning_rate": 1e-3,
        "train.warmup_fraction": 0.0,
        "train.patience": 0 if epochs <= 10 else _clip(epochs // 4, 3, 10),
        "train.refit": n <= REFIT_MAX_ROWS,
    }


# Up to this many n-gram ids in the rows a linear model is fitted on (training rows x words x n-gram lengths; about
# 100 k comments of 20 words), the default model is `linear`: the whole run stays under 1 GB and the fit takes
# seconds. Above it, `bow` streams batches from memory-mapped features in bounded memory (BENCHMARKS.md, Scale).
LINEAR_MAX_IDS = 4_000_000
# A linear fit's memory per n-gram id of its rows (ids, pairs, the CSR matrix, the solver's copy), measured: RSS
# 800 MB at 3.3 M ids, 1.59 GB at 10 M (benchmarks/scale.py with model.type=linear).
LINEAR_BYTES_PER_ID = 120
# And per weight (classes x n-gram columns): the solver's coefficients and gradient sums in float64 and our copies,
# measured: 1.32 GB more RSS for 500 classes x 60 k columns than for two classes of the same rows. Up to this many
# weights (about 2 GiB) the default stays linear: on 500 intents of 18 rows each it scored 100 % where bow, at its
# resolved rate, did not learn at all. None of the real labelled sets comes near (Glassdoor, 5 classes: 0.6 M).
LINEAR_BYTES_PER_WEIGHT = 44
LINEAR_MAX_WEIGHTS = 48_000_000
# Keys only an epoch-trained model reads: a user who set one asked for epochs, so the unset type is bow.
EPOCH_KEYS = ("model.embedding_dim", "train.epochs", "train.batch_size", "train.learning_rate", "train.patience")


def model_type(params: Params, st: DataStats) -> str:
    """The model type of a run that left `model.type` unset: linear for data whose n-gram matrix is small (there it
    beats SGD-trained bags, BENCHMARKS.md quality matrix), bow above, or when an epoch-only key was set."""
    if params.model.type is not None:
        return params.model.type
    if any(getattr(getattr(params, sec), key) is not None for sec, key in (k.split(".") for k in EPOCH_KEYS)):
        return "bow"
    small = linear_ids(params, st) <= LINEAR_MAX_IDS and linear_weights(st) <= LINEAR_MAX_WEIGHTS
    return "linear" if small else "bow"


def linear_ids(params: Params, st: DataStats) -> float:
    """The n-gram ids a linear fit holds at once: its rows (train + validation, the refit's) x words x lengths."""
    return (st.train_rows + st.validation_rows) * st.mean_tokens * params.preprocess.ngram_max


def linear_weights(st: DataStats) -> int:
    """A linear fit's weights: one per class and distinct n-gram of the training rows (at most; hashing merges)."""
    return st.labels * st.ngrams


def check_linear_fits(params: Params, st: DataStats) -> None:
    """A linear model holds its whole TF-IDF matrix in memory: refuse one that would not fit in
    train.memory_limit_gib before any work, as the bow table's size is refused."""
    if params.model.type != "linear":
        return
    need = linear_ids(params, st) * LINEAR_BYTES_PER_ID + linear_weights(st) * LINEAR_BYTES_PER_WEIGHT
    limit = params.train.memory_limit_gib * 2**30
    if need > limit:
        raise ParamsError(
            f"model.type = 'linear' holds its whole TF-IDF matrix and a weight per class and n-gram in memory: about "
            f"{need / 2**30:.1f} GiB for {st.train_rows:,} training rows of {st.mean_tokens:.0f} words, "
            f"{st.labels:,} classes and {st.ngrams:,} n-grams (more than train.memory_limit_gib = "
            f"{params.train.memory_limit_gib:g}); use model.type = 'bow', which streams, or raise the limit"
        )


def rules(params: Params, st: DataStats) -> dict[str, int | float | bool | str]:
    """Every rule's value for these statistics (set keys are not consulted). linear reads buckets and refit of
    bow's rules; the epoch keys it gets are bow's, so its params.json has every key and `model.type = "bow"`
    alone turns it into the bow run of the same data."""
    kind = model_type(params, st)
    if kind == "encoder":
        # The encoder has no hash table: buckets and embedding_dim only need a value to be fully resolved.
        return {
            "model.type": kind,
            "preprocess.buckets": 2**14,
            "model.embedding_dim": 16,
            **encoder_rules(st, params.model.encoder_mode),
        }
    return {"model.type": kind, **bow_rules(st, params.preprocess.ngram_max)}


def resolve_params(params: Params, st: DataStats) -> tuple[Params, dict[str, dict]]:
    """(resolved params, {key: {"value", "source": "set" | "data"}}): every unset key from the rules, every
    set key as it was. Validated again, so a resolved table that does not fit the memory limit is refused."""
    missing = params.unresolved()
    values = rules(params, st) if missing else {}
    data = params.model_dump(mode="json")
    table: dict[str, dict] = {}
    for section, key in AUTO_KEYS:
        name = f"{section}.{key}"
        current = data[section][key]
        if current is None:
            data[section][key] = values[name]
            table[name] = {"value": values[name], "source": "data"}
        else:
            table[name] = {"value": current, "source": "set"}
    resolved = params  # nothing to resolve: validated when loaded, returned as it is
    if missing:
        try:
            resolved = validate_params(data, source="parameters resolved from the data")
        except ParamsError as err:
            raise ParamsError(
                f"{err}\n(resolved from {st.train_rows} training rows; set the keys to pin them)"
            ) from None
    check_linear_fits(resolved, st)
    return resolved, table
