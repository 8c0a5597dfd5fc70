"""Defaults resolved from the data: a pure function of the data's statistics and the keys the user set.

The unit tests use generated rows; the flow test runs the real train flow on the session's Prefect server
and checks that the resolved values are what params.json, the manifest, W&B, the Prefect UI and
`trainkite verify` see, and that a second run with the same model ID resolves the same values.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pandas as pd
import pytest

from tests.process_helpers import run_artifacts

from models.features import word_tokens
from params import load_params, validate_params
from params.model import AUTO_KEYS, Params, ParamsError
from tasks import defaults

REPO = Path(__file__).resolve().parent.parent


def _rows(n: int, vocab: int, seed: int = 0, labels=("neg", "pos")) -> pd.DataFrame:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) + f" r{i}" for i in range(n)]
    split = ["validation" if i % 10 == 0 else "train" for i in range(n)]
    return pd.DataFrame({"split": split, "text": texts, "label": [labels[i % len(labels)] for i in range(n)]})


def test_statistics_streamed_from_the_snapshot_equal_those_of_the_rows_in_memory(tmp_path, monkeypatch):
    """The snapshot is read in batches (memory holds the sample, not the table); the stride sample and the
    counts are the same as over the whole table, whatever the batch size."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(5_000, 900, labels=("a", "b", "c"))
    rows.loc[rows.index % 7 == 3, "split"] = "evaluation"
    path = tmp_path / "snapshot.parquet"
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), path, row_group_size=333)
    monkeypatch.setattr(defaults, "STATS_SAMPLE_ROWS", 700)  # a stride of 5 over 3,4xx training rows
    in_memory = defaults.stats_of_rows(rows, ngram_max=2)
    assert in_memory.train_rows // in_memory.sampled_rows > 1
    for batch in (3, 97, 1_000, 65_536):  # 3: batches with no training row on the stride, or none at all
        monkeypatch.setattr("trainkite.snapshot.BATCH_ROWS", batch)
        assert defaults.dataset_stats(path, ngram_max=2) == in_memory
    assert defaults.dataset_stats(path, ngram_max=2, labels=5).labels == 5


def _counted_per_text(texts: list[str], ngram_max: int) -> tuple[int, int, int]:
    """(distinct words, distinct 1..ngram_max-grams, tokens): the statistics' definition, one text at a time."""
    words, grams, tokens = set(), set(), 0
    for text in texts:
        toks = word_tokens(text.lower())
        tokens += len(toks)
        words.update(toks)
        for k in range(2, ngram_max + 1):
            grams.update(tuple(toks[i : i + k]) for i in range(len(toks) - k + 1))
    return len(words), len(words) + len(grams), tokens


@pytest.mark.parametrize("ngram_max", [1, 2, 3, 4])
def test_vectorised_statistics_count_what_a_per_text_tokenizer_counts(ngram_max):
    """The statistics tokenise each distinct space-separated piece once; the counts are those of tokenising
    every text whole: case, apostrophes, tabs and newlines, runs of spaces, scripts without spaces, repeated
    and empty texts, n-grams never crossing from one text into the next."""
    rng = random.Random(ngram_max)
    pieces = ["İstanbul", "ΟΔΟΣ", "don't", "'quoted'", "a\tb\nc", "Straße", "ǅ", "ﬁ", "naïve", "!!!", "日本語",
              "rock'n'roll", "x", "X", "", "w1", "w2", "W1,", "end."]  # fmt: skip
    texts = [" ".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(400)]
    texts += ["", "   ", "a a a a a", "a  b", texts[0]]
    st = defaults._stats(texts, len(texts), 0, 2, ngram_max)
    words, grams, tokens = _counted_per_text(texts, ngram_max)
    assert (st.vocabulary, st.ngrams, st.mean_tokens) == (words, grams, round(tokens / len(texts), 3))


@pytest.mark.parametrize("ngram_max", [1, 2, 3])
def test_statistics_count_texts_as_the_features_cut_them(ngram_max):
    """preprocess.max_tokens cuts every text before its n-grams: the statistics of long texts under the cut are
    those of the texts cut by hand (words after the cut add no n-gram and no length)."""
    rng = random.Random(ngram_max)
    words = [f"w{i}" for i in range(500)] + ["don't", "日本語", "!!"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 90))) for _ in range(300)] + ["", "x"]
    cut = [" ".join(word_tokens(t.lower())[:40]) for t in texts]
    assert defaults._stats(texts, 302, 0, 2, ngram_max, max_tokens=40) == defaults._stats(cut, 302, 0, 2, ngram_max)
    assert (
        defaults._stats(texts, 302, 0, 2, ngram_max).mean_tokens
        > defaults._stats(cut, 302, 0, 2, ngram_max).mean_tokens
    )


def test_long_documents_resolve_to_the_model_their_cut_features_fit():
    """3,000 documents of 1,500 words, counted whole, came to 9 M n-gram ids: over the linear limit, so bow, which
    learnt nothing (24.9 % on four topics, where linear scored 97.3 %). Cut at max_tokens = 256 they are 1.5 M."""
    base = dict(train_rows=2_700, validation_rows=300, labels=4, vocabulary=20_000, ngrams=600_000, sampled_rows=2_700)
    whole = defaults.DataStats(**base, mean_tokens=1_500.0)
    cut = defaults.DataStats(**base, mean_tokens=256.0)
    assert defaults.model_type(_all_unset(), whole) == "bow"
    assert defaults.model_type(_all_unset(), cut) == "linear"


def test_bow_batches_hold_a_bounded_number_of_ids_so_long_texts_learn():
    """bow steps an embedding row by the mean of its occurrences in a batch: 128 documents of 511 ids learnt nothing
    where 32 learnt 99 %. Short texts keep the batch the row count gives."""
    base = dict(validation_rows=2_000, labels=4, vocabulary=20_000, ngrams=900_000, sampled_rows=18_000)
    long_docs = defaults.DataStats(**base, train_rows=18_000, mean_tokens=256.0)
    comments = defaults.DataStats(**base, train_rows=900_000, mean_tokens=20.5)
    assert defaults.bow_rules(long_docs, ngram_max=2)["train.batch_size"] == 32
    assert defaults.bow_rules(comments, ngram_max=2)["train.batch_size"] == 256
    assert defaults.bow_rules(long_docs, ngram_max=1)["train.batch_size"] == 64
    for st in (long_docs, comments):
        batch = defaults.bow_rules(st, ngram_max=2)["train.batch_size"]
        assert batch * st.mean_tokens * 2 <= defaults.BOW_IDS_PER_BATCH


def test_bows_rate_grows_with_many_classes_and_stays_for_few():
    """Each class row of bow's linear layer gets about 1/classes of a batch's gradient: 1,000 intents of 20 rows
    learnt nothing at 0.5 (0 %) and everything at 5."""
    base = dict(train_rows=18_000, validation_rows=2_000, vocabulary=5_000, ngrams=185_000, mean_tokens=10.0,
                sampled_rows=18_000)  # fmt: skip
    rate = {
        k: defaults.bow_rules(defaults.DataStats(**base, labels=k))["train.learning_rate"]
        for k in (2, 100, 500, 1_000, 50_000)
    }
    assert rate == {2: 0.5, 100: 0.5, 500: 2.5, 1_000: 5.0, 50_000: 5.0}


def _all_unset() -> Params:
    p = load_params(None)
    assert p.unresolved() == [f"{s}.{k}" for s, k in AUTO_KEYS]  # the shipped file leaves every one to the data
    return p


def test_statistics_count_rows_labels_vocabulary_and_length():
    st = defaults.stats_of_rows(_rows(1000, 300, labels=("a", "b", "c")), ngram_max=2)
    assert (st.train_rows, st.validation_rows, st.labels) == (900, 100, 3)
    assert 300 <= st.vocabulary <= 300 + 900 + 1 and st.ngrams > st.vocabulary
    assert 3 < st.mean_tokens < 22 and st.sampled_rows == 900


def test_small_and_large_data_get_different_defaults():
    small = defaults.stats_of_rows(_rows(800, 500), 2)
    large = defaults.stats_of_rows(_rows(60_000, 20_000), 2)
    ps, _ = defaults.resolve_params(_all_unset(), small)
    pl, _ = defaults.resolve_params(_all_unset(), large)
    assert ps.unresolved() == [] and pl.unresolved() == []
    # Small data: many passes, small batches, a small table; large data: few passes, large batches, more rows.
    assert ps.train.epochs > pl.train.epochs and ps.train.batch_size < pl.train.batch_size
    assert ps.preprocess.buckets < pl.preprocess.buckets
    assert ps.train.patience > 0
    # More classes, more dimensions.
    five = defaults.stats_of_rows(_rows(800, 500, labels=tuple("abcde")), 2)
    assert defaults.resolve_params(_all_unset(), five)[0].model.embedding_dim > ps.model.embedding_dim


def test_explicit_keys_win_and_the_table_says_which_came_from_where():
    st = defaults.stats_of_rows(_rows(800, 500), 2)
    p = load_params(None, ["train.epochs=3", "preprocess.buckets=4096", "train.learning_rate=0.25"])
    resolved, table = defaults.resolve_params(p, st)
    assert (resolved.train.epochs, resolved.preprocess.buckets, resolved.train.learning_rate) == (3, 4096, 0.25)
    assert table["train.epochs"] == {"value": 3, "source": "set"}
    assert (
        table["train.batch_size"]["source"] == "data"
        and table["train.batch_size"]["value"] == resolved.train.batch_size
    )
    # Resolving resolved parameters changes nothing (what verify and a resumed run rely on) ...
    again, table2 = defaults.resolve_params(resolved, st)
    assert again == resolved and {v["source"] for v in table2.values()} == {"set"}
    # ... and other data does not move a value once resolved.
    other = defaults.stats_of_rows(_rows(50_000, 9_000), 2)
    assert defaults.resolve_params(resolved, other)[0] == resolved


def test_unset_keys_survive_json_the_ui_form_and_params_json():
    """The Prefect UI form, Buildkite's --set and Batch's --params-json all carry Params as JSON: an unset key
    must come back unset (null), a set one as set."""
    p = load_params(None, ["train.batch_size=64"])
    back = validate_params(json.loads(p.model_dump_json()))
    assert back == p and back.train.batch_size == 64 and back.train.epochs is None
    from prefect.utilities.callables import parameter_schema

    from flows.train import train

    schema = parameter_schema(train)
    assert schema.model_dump()["properties"]["params"]["default"]["train"]["epochs"] is None
    st = defaults.stats_of_rows(_rows(800, 500), 2)
    assert defaults.resolve_params(back, st) == defaults.resolve_params(p, st)
    # AWS Batch: the job's command carries the params as --params-json, unset keys as null.
    from flows.batch_steps import training_command

    command = training_command(p, "m-1")
    sent = json.loads(command[command.index("--params-json") + 1])
    assert sent["train"]["epochs"] is None and sent["train"]["batch_size"] == 64
    assert validate_params(sent) == p
    # Buildkite/CLI --set: a value set there is explicit; the same file without it leaves the key to the data.
    from params import parse_overrides

    assert parse_overrides(["train.epochs=7"]) == {"train.epochs": 7}
    assert load_params(None, parse_overrides(["train.epochs=7"])).unresolved().count("train.epochs") == 0


def test_a_resolved_table_that_does_not_fit_in_memory_is_refused_by_name():
    st = defaults.stats_of_rows(_rows(800, 500), 2)
    p = load_params(None, ["train.memory_limit_gib=0.001", "model.type='bow'"])
    with pytest.raises(ParamsError, match="preprocess.buckets x model.embedding_dim"):
        defaults.resolve_params(p, st)


def test_trainers_refuse_unresolved_params():
    with pytest.raises(ParamsError, match="train.epochs.*unset"):
        load_params(None, ["preprocess.buckets=4096", "model.embedding_dim=16"]).require_resolved()


def test_the_encoder_gets_its_own_rate_and_warmup():
    st = defaults.stats_of_rows(_rows(5_000, 2_000), 2)
    frozen, _ = defaults.resolve_params(load_params(None, ["model.type='encoder'"]), st)
    tuned, _ = defaults.resolve_params(load_params(None, ["model.type='encoder'", "model.encoder_mode='finetune'"]), st)
    assert frozen.train.learning_rate == 1e-3 and frozen.train.warmup_fraction == 0.0
    assert tuned.train.learning_rate == 3e-5 and tuned.train.warmup_fraction > 0


def _run(params, model_id):
    from flows.train import train

    state = train(params=params, model_id=model_id, return_state=True)
    return state.result(), state.state_details.flow_run_id


def test_the_resolved_values_are_what_every_step_stores_shows_and_rebuilds(prefect_api, tk_home, params_factory):
    from prefect import get_client

    from tasks.verify import verify_model
    from trainkite.store import open_store

    # The demo params with only the buckets and epochs pinned (to keep it quick): the rest comes from the data.
    params = load_params(
        REPO / "params" / "sentiment.toml", {"train.epochs": 3, "preprocess.buckets": 4096, "tracking.backend": "wandb"}
    )
    assert "train.batch_size" in params.unresolved()
    result, run_id = _run(params, "defaults-1")
    store = open_store()
    folder = Path(store.local_path("sentiment/defaults-1"))
    stored = json.loads((folder / "params.json").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    resolved = validate_params(stored)
    assert resolved.unresolved() == [] and manifest["lineage"]["params"] == stored
    assert manifest["lineage"]["params_hash"] == resolved.params_hash()
    assert (resolved.train.epochs, resolved.preprocess.buckets) == (3, 4096)  # set keys passed through
    # The same function over the same snapshot gives the same values.
    st = defaults.dataset_stats(folder / "data" / "snapshot.parquet", params.preprocess.ngram_max, 3)
    assert defaults.resolve_params(params, st)[0] == resolved
    assert json.loads((folder / "features.json").read_text())["embedding_dim"] == resolved.model.embedding_dim

    # Prefect UI: a table of every resolved key with its source.
    with get_client(sync_client=True) as c:
        arts = [a for a in run_artifacts(c, run_id) if a.key == "resolved-params"]
    table = arts[0].data if isinstance(arts[0].data, list) else json.loads(arts[0].data)
    rows = {r["key"]: r for r in table}
    assert rows["train.batch_size"] == {"key": "train.batch_size", "value": resolved.train.batch_size, "source": "data"}
    assert rows["train.epochs"]["source"] == "set"

    # W&B: the run's config holds the resolved values.
    [run_dir] = list((Path(os.environ["WANDB_DIR"]) / "wandb").glob("offline-run-*-defaults-1"))
    blob = (run_dir / "run-defaults-1.wandb").read_bytes()
    assert f'"batch_size": {resolved.train.batch_size}'.encode() in blob.replace(b'"batch_size":', b'"batch_size": ')

    # verify rebuilds from the manifest alone, bit for bit.
    assert verify_model(store, "defaults-1").identical

    from tests.test_train_flow import _task_states

    # A re-run of the published model ID resolves the same values. Its scratch was removed after publish, so it
    # recomputes (cached steps would point at removed files) and publishes the same files: the same model.
    _, run_b = _run(params, "defaults-1")
    states = _task_states(run_b)
    assert states["train"] == ["Completed"] and states["resolve_defaults"] == ["Completed"]
    assert json.loads((folder / "params.json").read_text()) == stored
    assert json.loads((folder / "manifest.json").read_text())["files"] == manifest["files"]
