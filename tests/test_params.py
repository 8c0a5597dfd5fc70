import pytest

from params import ParamsError, load_params, parse_overrides
from tests.conftest import REPO


def test_default_file_loads_and_overrides_apply():
    p = load_params(None, ["train.epochs=5", "preprocess.ngram_max=3", "data.labels=['a','b']"])
    assert p.train.epochs == 5 and p.preprocess.ngram_max == 3 and p.data.labels == ["a", "b"]
    assert p.model.name == "sentiment"


def test_topic_params_load():
    p = load_params(REPO / "params" / "topic.toml")
    assert p.model.name == "topic" and len(p.data.labels) == 6


def test_the_test_split_is_resolved_from_whether_an_evaluation_set_judges_the_model():
    """With evaluation.query, the human-labelled set is the test: no training row is held back for one. Without
    it, a tenth of the rows is. A set value wins either way, and the resolved value is what params.json stores."""
    shipped = load_params(None)
    assert shipped.evaluation.query and shipped.data.test_fraction == 0.0
    assert load_params(REPO / "params" / "topic.toml").data.test_fraction == 0.0
    assert load_params(None, ["evaluation.query=''"]).data.test_fraction == 0.1
    assert load_params(None, ["data.test_fraction=0.2"]).data.test_fraction == 0.2
    assert load_params(None, ["data.test_fraction=0.2", "evaluation.query=''"]).data.test_fraction == 0.2
    assert '"test_fraction":0.0' in shipped.canonical_json()


@pytest.mark.parametrize(
    "override, needle",
    [
        (["train.epochs=-1"], "train.epochs"),
        (["train.epochs=ten"], "train.epochs"),
        (["train.epoch=3"], "unknown key; allowed keys here"),
        (["bogus.x=1"], "unknown section 'bogus'"),
        (["model.type=cnn"], "'linear', 'bow' or 'encoder'"),
        (["data.labels=[]"], "data.labels"),
        (["data.source=s3"], "'local' or 'athena'"),
        (["epochs=3"], "must be section.key"),
        (["train.epochs"], "must look like section.key=value"),
        (["preprocess.buckets=1"], "preprocess.buckets"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ParamsError) as e:
        load_params(None, override)
    assert needle in str(e.value)
    assert e.value.exit_code == 2


def test_unknown_key_lists_allowed(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[train]\nepochz = 3\n")
    with pytest.raises(ParamsError) as e:
        load_params(f)
    msg = str(e.value)
    assert "train.epochz" in msg and "epochs" in msg


def test_bad_toml_and_missing_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[train\nepochs = 3")
    with pytest.raises(ParamsError, match="not valid TOML"):
        load_params(f)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.toml")


def test_override_values_are_toml_literals():
    assert parse_overrides(["a.b=3", "a.c=0.5", "a.d=true", "a.e=hello", 'a.f="x y"']) == {
        "a.b": 3,
        "a.c": 0.5,
        "a.d": True,
        "a.e": "hello",
        "a.f": "x y",
    }


def test_a_bare_null_unsets_a_key_the_file_sets():
    from params import load_params

    assert parse_overrides(["data.labels=null", 'data.query="null"']) == {"data.labels": None, "data.query": "null"}
    shipped = load_params(None, [])
    assert shipped.data.labels == ["negative", "neutral", "positive"]
    unset = load_params(None, ["data.labels=null", "train.seed=7"])
    assert unset.data.labels is None and unset.train.seed == 7  # labels now come from the data
    with pytest.raises(ParamsError, match="train.threads"):  # a key that must have a value says so by name
        load_params(None, ["train.threads=null"])


def test_params_hash_is_stable():
    assert load_params().params_hash() == load_params().params_hash()
    assert load_params().params_hash() != load_params(None, ["train.seed=1"]).params_hash()


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["train.weight_decay=inf"], "train.weight_decay: Input should be a finite number"),
        (["train.weight_decay=2.0"], "train.weight_decay: Input should be less than or equal to 1"),
        (["train.learning_rate=100"], "train.learning_rate: Input should be less than or equal to 50"),
        (["train.learning_rate=nan"], "train.learning_rate: Input should be a finite number"),
        (["train.batch_size=0"], "train.batch_size: Input should be greater than or equal to 1"),
        (["train.seed=1e17"], "train.seed: Input should be less than or equal to 4294967295"),
        (["train.seed=4294967296"], "train.seed: Input should be less than or equal to 4294967295"),
        ([f'tracking.project="{"p" * 129}"'], "tracking.project: String should have at most 128 characters"),
        (['tracking.project="a/b"'], "tracking.project: String should match pattern"),
        (['data.label_column="text"'], "data.text_column and data.label_column are both 'text'"),
    ],
)
def test_values_that_break_a_run_are_refused_by_name(overrides, needle):
    with pytest.raises(ParamsError) as err:
        load_params(None, overrides)
    assert needle in str(err.value)


def test_the_largest_values_that_fit_are_accepted():
    p = load_params(
        None,
        ["train.seed=4294967295", f'tracking.project="{"p" * 128}"', "train.learning_rate=50", "train.weight_decay=1"],
    )
    assert p.train.seed == 2**32 - 1


def test_a_table_that_does_not_fit_is_refused_before_any_work():
    with pytest.raises(ParamsError, match=r"16777216 x 1024 is a 64.0 GiB table.*train.memory_limit_gib = 8"):
        load_params(None, ["preprocess.buckets=16777216", "model.embedding_dim=1024"])
    # The limit is a parameter: a machine with the memory can raise it.
    p = load_params(None, ["preprocess.buckets=16777216", "model.embedding_dim=1024", "train.memory_limit_gib=256"])
    assert p.preprocess.buckets == 2**24
    # The encoder has no hash table: the bow keys do not count against it.
    load_params(None, ["preprocess.buckets=16777216", "model.embedding_dim=1024", "model.type='encoder'"])
