"""Real data at scale: streamed fetch, vectorised features, memory-mapped training; the same bytes whatever the
batch size or thread count; the query can read only data.path's tables. Plain functions, real DuckDB, moto."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import data
from models import registry as model_types, features as pp
from trainkite.errors import DataError
from trainkite.manifest import ModelRef, recorded_schemas
from trainkite.snapshot import split_texts
from trainkite.store import LocalStore

WORDS = [
    "good",
    "great",
    "fine",
    "awful",
    "bad",
    "poor",
    "team",
    "pay",
    "manager",
    "office",
    "remote",
    "hours",
    "plan",
    "tools",
    "lunch",
    "desk",
    "the",
    "a",
    "is",
    "was",
    "very",
    "not",
    "never",
    "always",
    ",",
    ".",
    "!",
    "?",
    "don't",
    "isn't",
    "café",
    "naïve",
]


def generated_rows(n: int, seed: int = 7) -> pd.DataFrame:
    """Deterministic labelled comments: the label follows the sentiment words, with 10% noise."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 25, size=n)
    idx = rng.integers(0, len(WORDS), size=int(lengths.sum()))
    words = np.asarray(WORDS, dtype=object)[idx]
    cut = np.cumsum(lengths)[:-1]
    texts = [" ".join(w) + f" #{i}" for i, w in enumerate(np.split(words, cut))]
    pos = np.isin(idx, [0, 1, 2]).astype(np.int64)
    neg = np.isin(idx, [3, 4, 5]).astype(np.int64)
    score = np.add.reduceat(pos - neg, np.r_[0, cut]) if n else np.zeros(0)
    label = np.where(score >= 0, "positive", "negative")
    flip = rng.random(n) < 0.1
    label = np.where(flip, np.where(label == "positive", "negative", "positive"), label)
    return pd.DataFrame({"text": texts, "label": label})


def _params(params_factory, folder, **ov):
    p = params_factory(
        **{
            "data.path": str(folder),
            "data.query": "SELECT text, label FROM t",
            "data.labels": ["negative", "positive"],
            "evaluation.query": None,  # no human-labelled set: the test split is drawn from the table
            **ov,
        }
    )
    return p


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _table(folder: Path, df: pd.DataFrame, name: str = "t") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def test_same_fingerprint_features_and_weights_whatever_the_batch_size_threads_and_tokeniser(
    params_factory, tmp_path, monkeypatch
):
    folder = _table(tmp_path / "src", generated_rows(8_000))
    p = _params(params_factory, folder, **{"train.epochs": 2, "preprocess.buckets": 1 << 14})
    results = []
    runs = [(65_536, 65_536, 1, False), (997, 1_234, 2, True), (5_000, 333, 3, None)]
    for i, (raw_rows, rows, threads, native) in enumerate(runs):
        monkeypatch.setattr(data, "RAW_BATCH_ROWS", raw_rows)
        ds = data.fetch_dataset(p, tmp_path / f"wd{i}")
        assert data.snapshot_fingerprint(ds.snapshot_path, batch_rows=rows) == ds.fingerprint
        store = LocalStore(tmp_path / f"store{i}")
        feats = pp.preprocess(
            ds, p.preprocess, store, tmp_path / f"wd{i}", batch_rows=rows, threads=threads, native=native
        )
        arrays = pp.load_features(feats, store, tmp_path / f"wd{i}")
        assert isinstance(arrays["train_ids"], np.memmap) and arrays["train_ids"].dtype == np.int32
        digest = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in arrays.items()}
        trained = model_types.train(feats, p, store, ModelRef("sentiment", f"scale-{i}"), tmp_path / f"wd{i}")
        results.append((ds.fingerprint, digest, _sha(Path(trained.weights_path))))
    assert results[0] == results[1] == results[2]
    # The stored features are what `encode` (serving's featurizer) gives the same texts.
    snap = data.read_snapshot(ds.snapshot_path)
    train = snap[snap["split"] == "train"]["text"].tolist()
    ids, offsets = pp.encode(train, p.preprocess)
    assert np.array_equal(ids, arrays["train_ids"]) and np.array_equal(offsets, arrays["train_offsets"])


def test_encode_keeps_the_tokens_of_schema_1_and_works_per_text():
    p = pp.PreprocessParams(max_tokens=6, ngram_max=3, buckets=65536)
    texts = [
        "It's great, isn't it?!  Café déjà-vu 😀 naïve_x __ 12.5%",
        "",
        "   ",
        "one",
        "a\u00a0b\tc\nd",
        "ΣΑΣ straße   don't",
    ]
    ids, offsets = pp.encode(texts, p)
    ends = [*offsets[1:], len(ids)]
    for t, s, e in zip(texts, offsets, ends, strict=True):
        assert e - s == len(pp.featurize_v1(t, p))  # same tokens, so the same number of n-grams
        assert pp.featurize(t, p) == ids[s:e].tolist()  # one text alone = the same text in a batch
    assert pp.featurize("good movie", p) != pp.featurize("movie good", p)  # bigrams are ordered


def test_older_models_keep_their_featurizer_and_say_which_schema_changed(params_factory, tmp_path):
    folder = _table(tmp_path / "src", generated_rows(2_000))
    p = _params(params_factory, folder)
    ds = data.fetch_dataset(p, tmp_path / "wd")
    store = LocalStore(tmp_path / "store")
    feats = pp.preprocess(ds, p.preprocess, store, tmp_path / "wd", schema=1)
    arrays = pp.load_features(feats, store, tmp_path / "wd")
    texts = data.read_snapshot(ds.snapshot_path).query("split == 'test'")["text"].tolist()
    assert split_texts(ds.snapshot_path, "test") == texts  # the champion comparison's read, batch by batch
    ids, offsets = pp.encode_v1(texts, p.preprocess)
    assert np.array_equal(arrays["test_ids"], ids) and np.array_equal(arrays["test_offsets"], offsets)
    assert pp.encoder_for(None) is pp.encode_v1
    today = zip(pp.encoder_for(pp.FEATURE_SCHEMA)(texts, p.preprocess), pp.encode(texts, p.preprocess), strict=True)
    assert all(np.array_equal(a, b) for a, b in today)
    old = {"lineage": {"data": {"fingerprint": "x"}}}
    assert recorded_schemas(old) == {"snapshot": 1, "features": 1}
    from tasks.verify import lineage_changes

    changes = lineage_changes({**old, "model_type": "bow", "lineage": {**old["lineage"], "device": "cpu"}}, "cpu")
    assert changes["schema.features"] == {"model": 1, "now": pp.FEATURE_SCHEMA}
    assert changes["schema.snapshot"] == {"model": 1, "now": data.SNAPSHOT_SCHEMA}
    # The schema-1 fingerprint of the same rows is still computable, so an old model's data is still checked.
    v1 = data.snapshot_fingerprint(ds.snapshot_path, schema=1)
    text_order = data.canonical(data.read_snapshot(ds.snapshot_path), schema=1)
    assert v1 == data.fingerprint_v1(text_order) and v1 != ds.fingerprint


@pytest.mark.parametrize(
    "column, values, kind",
    [
        ("list", [["a", "b"], ["c"]], "list<"),
        ("struct", [{"x": "a"}, {"x": "b"}], "struct<"),
    ],
)
def test_nested_text_column_is_refused_naming_it_and_its_type(params_factory, tmp_path, column, values, kind):
    folder = tmp_path / "src"
    folder.mkdir()
    pq.write_table(pa.table({"body": values, "label": ["negative", "positive"]}), folder / "t.parquet")
    p = _params(params_factory, folder, **{"data.query": "SELECT body, label FROM t", "data.text_column": "body"})
    with pytest.raises(DataError) as e:
        data.fetch_dataset(p, tmp_path / "wd")
    assert "text column 'body' is of type" in str(e.value) and kind in str(e.value)
    assert not (tmp_path / "wd").exists()


def test_refusals_name_a_row(params_factory, tmp_path):
    df = generated_rows(5_000)
    df.loc[3_210, "text"] = None
    folder = _table(tmp_path / "src", df)
    with pytest.raises(DataError, match=r"1 row\(s\) have a null text \(e\.g\. row 3,210\)"):
        data.fetch_dataset(_params(params_factory, folder), tmp_path / "wd")


ATTACKS = [
    (
        "copy-then-select",
        "COPY (SELECT 1) TO '{out}/pwned.csv'; SELECT text, label FROM t",
        "must be exactly one SELECT statement",
    ),
    ("copy", "COPY (SELECT text, label FROM t) TO '{out}/pwned.csv'", "must be a SELECT statement, not COPY"),
    (
        "read-host-file",
        "SELECT column0 AS text, 'positive' AS label FROM read_csv('{host}', header=false)",
        "Cannot access file",
    ),
    (
        "read-text-host-file",
        "SELECT content AS text, 'positive' AS label FROM read_text('{host}')",
        "Cannot access file",
    ),
    ("glob", "SELECT file AS text, 'positive' AS label FROM glob('{out}/*')", "Cannot access file"),
    ("attach", "ATTACH '{out}/pwned.duckdb' AS x", "must be a SELECT statement, not ATTACH"),
    ("install", "INSTALL httpfs", "must be a SELECT statement, not LOAD"),
    ("set", "SET enable_external_access = true", "must be a SELECT statement, not SET"),
    ("create", "CREATE TABLE pwned AS SELECT 1", "must be a SELECT statement, not CREATE"),
    ("pragma", "PRAGMA version", "must be a SELECT statement, not PRAGMA"),
]


@pytest.mark.parametrize("name, sql, needle", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_the_query_reads_data_path_only(params_factory, tmp_path, name, sql, needle):
    folder = _table(tmp_path / "src", generated_rows(200))
    host = tmp_path / "host.csv"
    host.write_text("secret line\n")
    out = tmp_path / "out"
    out.mkdir()
    p = _params(params_factory, folder, **{"data.query": sql.format(out=out, host=host)})
    with pytest.raises(DataError) as e:
        data.fetch_dataset(p, tmp_path / "wd")
    assert needle in str(e.value)
    assert list(out.iterdir()) == [] and not (tmp_path / "wd").exists()


def test_a_file_name_holding_sql_names_a_table_and_runs_nothing(params_factory, tmp_path, monkeypatch):
    folder = _table(tmp_path / "src", generated_rows(300))
    evil = "x\" AS SELECT 1; COPY (SELECT 1) TO 'pwned.csv'; CREATE VIEW \"y"
    generated_rows(10).to_csv(folder / f"{evil}.csv", index=False)
    monkeypatch.chdir(tmp_path)
    p = _params(params_factory, folder)
    ds = data.fetch_dataset(p, tmp_path / "wd")
    assert ds.counts["train"] > 100
    assert not (tmp_path / "pwned.csv").exists() and not (folder / "pwned.csv").exists()
    # The file is a table under its own (quoted) name, nothing else.
    rows = data.query_local(folder, 'SELECT count(*) AS n FROM "' + evil.replace('"', '""') + '"')
    assert int(rows["n"][0]) == 10


def test_a_link_out_of_the_folder_is_refused(params_factory, tmp_path):
    folder = _table(tmp_path / "src", generated_rows(100))
    (tmp_path / "outside.csv").write_text("text,label\nsecret,positive\n")
    os.symlink(tmp_path / "outside.csv", folder / "leak.csv")
    with pytest.raises(DataError, match="leak.csv links outside"):
        data.fetch_dataset(_params(params_factory, folder), tmp_path / "wd")


def test_athena_result_is_read_in_chunks(aws, params_factory, tmp_path, monkeypatch):
    """awswrangler's chunked read against moto's Athena: the same rows and fingerprint as one read."""
    import boto3
    import requests

    boto3.client("s3").create_bucket(Bucket="athena-out")
    df = generated_rows(120)
    rows = [{"Data": [{"VarCharValue": "text"}, {"VarCharValue": "label"}]}]
    rows += [{"Data": [{"VarCharValue": t}, {"VarCharValue": lab}]} for t, lab in zip(df.text, df.label, strict=True)]
    col = [
        {
            "Name": n,
            "Type": "varchar",
            "CatalogName": "hive",
            "SchemaName": "",
            "TableName": "",
            "Nullable": "UNKNOWN",
            "Precision": 0,
            "Scale": 0,
            "CaseSensitive": True,
        }
        for n in ("text", "label")
    ]
    p = params_factory(
        **{
            "data.source": "athena",
            "data.athena_s3_output": "s3://athena-out/q/",
            "data.query": "SELECT text, label FROM comments",
            "data.labels": ["negative", "positive"],
        }
    )
    p.evaluation.query = None
    chunks_seen = []
    real = data.pq.ParquetWriter

    class Counting(real):
        def write_table(self, table, *a, **kw):
            chunks_seen.append(table.num_rows)
            return super().write_table(table, *a, **kw)

    monkeypatch.setattr(data.pq, "ParquetWriter", Counting)
    prints = []
    for chunk in (17, 1000):
        monkeypatch.setattr(data, "ATHENA_CHUNK_ROWS", chunk)
        chunks_seen.clear()
        requests.post(
            f"{aws}/moto-api/static/athena/query-results",
            json={"results": [{"rows": rows, "column_info": col}]},
            timeout=10,
        )
        ds = data.fetch_dataset(p, tmp_path / f"wd{chunk}")
        assert sum(ds.counts.values()) == 120 and ds.source == "athena"
        prints.append(ds.fingerprint)
        if chunk == 17:
            assert len(chunks_seen) > 1 and max(chunks_seen) <= 17
    assert (
        prints[0]
        == prints[1]
        == data.fingerprint(
            data.canonical(
                df.assign(
                    split=[
                        data.split_of(t, p.data.split_seed, p.data.validation_fraction, p.data.test_fraction)
                        for t in df.text
                    ]
                )
            )
        )
    )


def test_a_300k_row_table_trains(params_factory, tmp_path):
    """Large-ish: fetch, features, two epochs and scoring of 300,000 generated rows, in bounded time."""
    folder = _table(tmp_path / "src", generated_rows(300_000))
    p = _params(
        params_factory,
        folder,
        # The shipped rate (tasks/defaults.py) at the largest batch its rule picks.
        **{"train.epochs": 1, "preprocess.buckets": 1 << 16, "train.batch_size": 256, "train.learning_rate": 0.5},
    )
    ds = data.fetch_dataset(p, tmp_path / "wd")
    assert sum(ds.counts.values()) == 300_000
    store = LocalStore(tmp_path / "store")
    feats = model_types.featurize(ds, p, store, tmp_path / "wd")
    trained = model_types.train(feats, p, store, ModelRef("sentiment", "big-1"), tmp_path / "wd")
    assert trained.history[-1]["val_accuracy"] > 0.7
