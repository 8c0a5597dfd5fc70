"""Feature schema 3's tokens: scripts written without spaces are cut into characters, combining marks stay in
their word, ASCII is tokenised exactly as schema 2 did, and models of schema 2 keep their own featurizer."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from models import features as pp
from models.linear import LinearScores, fit_tensors

P = pp.PreprocessParams(buckets=1 << 18, ngram_max=2)


@pytest.mark.parametrize(
    "text, tokens",
    [
        # NFKC (the shipped unicode_form) turns full-width punctuation into ASCII
        ("这个产品非常好，我很喜欢！", ["这", "个", "产", "品", "非", "常", "好", ",", "我", "很", "喜", "欢", "!"]),
        ("日本語のテキスト", ["日", "本", "語", "の", "テ", "キ", "ス", "ト"]),
        ("ภาษาไทยง่าย", ["ภ", "า", "ษ", "า", "ไ", "ท", "ย", "ง่", "า", "ย"]),  # the tone mark stays on its letter
        ("हिन्दी भाषा अच्छी है", ["हिन्दी", "भाषा", "अच्छी", "है"]),  # vowel signs are marks, not word breaks
        ("한국어 텍스트입니다", ["한국어", "텍스트입니다"]),  # Korean is written with spaces
        ("Café don't, ok?", ["café", "don't", ",", "ok", "?"]),
        ("e\u0301cole", ["école"]),  # NFKC composes; a mark never starts a token of its own after a letter
        ("\u0301", ["\u0301"]),  # a lone mark is still a token
    ],
)
def test_schema_3_tokens(text, tokens):
    assert pp.tokenize(text, P) == tokens


def test_schema_2_tokens_are_what_older_models_were_trained_on():
    assert pp.tokenize("这个产品非常好", P, 2) == ["这个产品非常好"]
    assert pp.tokenize("हिन्दी", P, 2) == ["ह", "ि", "न", "्", "द", "ी"]


def test_ascii_is_tokenised_as_schema_2_did_so_the_compiled_pass_serves_both():
    texts = []
    for c in range(128):
        ch = chr(c)
        texts += [ch, f"ab{ch}cd", f"x'{ch}y", f"{ch}{ch}", f"don{ch}t", f"{ch}'s"]
    rng = random.Random(3)
    texts += ["".join(chr(rng.randrange(128)) for _ in range(rng.randint(0, 40))) for _ in range(5_000)]
    for t in texts:  # schema 3's own pattern, which word_tokens skips for ASCII because of this
        assert pp._TOKENS[3].findall(t) == pp._TOKENS[2].findall(t), repr(t)
    mixed = texts + ["这个产品非常好", "हिन्दी भाषा", "café x²"]
    for schema in (2, 3):
        python = pp.encode_int32(mixed, P, native=False, schema=schema)
        native = pp.encode_int32(mixed, P, native=True, schema=schema)
        assert all(np.array_equal(a, b) for a, b in zip(python, native, strict=True))
    ascii_ids = [pp.encode_int32(texts, P, schema=s)[0] for s in (2, 3)]
    assert np.array_equal(*ascii_ids)


def _chinese_reviews(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Sentences without spaces: filler words around one or two words of the label's polarity."""
    rng = random.Random(seed)
    good, bad = ["好", "棒", "喜欢", "满意", "优秀", "推荐"], ["差", "糟糕", "讨厌", "失望", "垃圾", "退货"]
    filler = ["这个", "产品", "我", "的", "是", "了", "很", "非常", "服务", "质量", "价格", "东西", "今天", "收到"]
    texts, y = [], np.arange(n) % 2
    for label in y:
        words = [rng.choice(filler) for _ in range(8)]
        words.insert(rng.randrange(len(words)), rng.choice(good if label else bad))
        texts.append("".join(words))
    return texts, y


def test_a_chinese_table_is_learnable_under_schema_3_and_was_not_under_schema_2():
    train_x, train_y = _chinese_reviews(1_500, 1)
    test_x, test_y = _chinese_reviews(500, 2)
    accuracy = {}
    for schema in (2, 3):
        ids, offsets = pp.encode_int32(train_x, P, schema=schema)
        tensors, _ = fit_tensors(ids, offsets, train_y, 2, P.buckets, 4.0, 0)
        probs = LinearScores(tensors, P.buckets, 2)(*pp.encode_int32(test_x, P, schema=schema))
        accuracy[schema] = float(np.mean(probs.argmax(1) == test_y))
    assert accuracy[3] > 0.95  # character uni- and bigrams see the polarity words
    assert accuracy[2] < 0.65  # one token per sentence: every test sentence is new


def test_unknown_feature_schema_is_refused_by_number():
    with pytest.raises(ValueError, match="feature schema 9 is unknown"):
        pp.encoder_for(9)


def test_a_model_made_with_feature_schema_2_serves_and_verifies_with_its_own_tokens(
    prefect_api, tk_home, params_factory, demo_data, monkeypatch
):
    from flows.train import train
    from models.predictor import Predictor
    from tasks.verify import verify_model
    from trainkite.store import open_store

    comments = pd.read_csv(demo_data / "comments.csv")
    extra = comments.head(40).copy()
    extra["comment_id"] = [f"u{i:05d}" for i in range(len(extra))]
    extra["text"] = [f"{t} हिन्दी भाषा अच्छी है 这个产品非常好{i}" for i, t in enumerate(extra["text"])]
    pd.concat([comments, extra]).to_csv(demo_data / "comments.csv", index=False)
    params = params_factory(**{"data.path": str(demo_data)})
    with monkeypatch.context() as m:  # train as the code of schema 2 did
        m.setattr(pp, "FEATURE_SCHEMA", 2)
        train(params=params, model_id="schema2-1")
    store = open_store()
    manifest = json.loads(store.get_bytes("sentiment/schema2-1/manifest.json"))
    assert manifest["lineage"]["data"]["schemas"]["features"] == 2
    cfg = json.loads(store.get_bytes("sentiment/schema2-1/features.json"))
    assert cfg["feature_schema"] == 2
    report = verify_model(store, "schema2-1")
    assert report.ok and report.identical
    assert report.lineage_changes["schema.features"] == {"model": 2, "now": pp.FEATURE_SCHEMA}
    # Served with the tokens it was trained on: a schema-2 encoding of the text, not today's.
    scorer = Predictor.from_store(store, "schema2-1")._score
    text = ["हिन्दी भाषा अच्छी है"]
    ids2, ids3 = (pp.encode(text, scorer.preprocess, schema=s)[0] for s in (2, 3))
    assert not np.array_equal(ids2, ids3)
    assert np.array_equal(scorer._encode(text, scorer.preprocess)[0], ids2)
