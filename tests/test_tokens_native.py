"""The compiled ASCII tokeniser gives exactly the ids of the Python path (regex + hashlib's blake2b)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from models import features as pp


def _both(texts, p):
    python = pp.encode_int32(texts, p, native=False)
    native = pp.encode_int32(texts, p, native=True)
    return python, native


def _same(texts, p):
    (ids_py, off_py), (ids_nat, off_nat) = _both(texts, p)
    assert np.array_equal(off_py, off_nat)
    assert np.array_equal(ids_py, ids_nat)
    return ids_py


def test_every_ascii_byte_is_classed_as_the_regex_classes_it():
    p = pp.PreprocessParams(buckets=1 << 20, ngram_max=2)
    texts = []
    for c in range(128):
        ch = chr(c)
        # alone, between word characters, after an apostrophe, and doubled
        texts += [ch, f"ab{ch}cd", f"x'{ch}y", f"{ch}{ch}", f"don{ch}t", f"{ch}'s"]
    ids = _same(texts, p)
    assert len(ids) > len(texts)  # tokens were found, not only empty texts


@pytest.mark.parametrize("length", [1, 7, 8, 9, 127, 128, 129, 255, 256, 257, 1000])
def test_tokens_of_every_length_hash_as_blake2b(length):
    # One blake2b block is 128 bytes: the lengths either side of one and two blocks.
    p = pp.PreprocessParams(buckets=1 << 24, ngram_max=1)
    word = "".join(random.Random(length).choice("abcXYZ019_") for _ in range(length))
    ids = _same([word, word.upper(), f"{word}'{word}"], p)
    assert ids[0] == ids[1]  # lowercased before hashing


@pytest.mark.parametrize(
    "overrides",
    [{}, {"lowercase": False}, {"ngram_max": 3, "max_tokens": 7}, {"unicode_form": "none", "ngram_max": 1}],
)
def test_random_text_mixing_ascii_and_unicode_gives_the_same_ids(overrides):
    p = pp.PreprocessParams(buckets=1 << 18, **{"ngram_max": 2, **overrides})
    rng = random.Random(17)
    alphabet = list("abcdefgXYZ0129_ '',.!?-\t\n\x1c\x1f\x00\x7f") + ["é", "ß", "Σ", "😀", "\u00a0", "ﬁ", "Ａ"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(3_000)]
    texts += ["", "   ", "It's great, isn't it?!", "café déjà-vu", "rock'n'roll 'quoted' a''b x' '"]
    _same(texts, p)
