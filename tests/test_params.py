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


@pytest.mark.parametrize(
    "override, needle",
    [
        (["train.epochs=-1"], "train.epochs"),
        (["train.epochs=ten"], "train.epochs"),
        (["train.epoch=3"], "unknown key; allowed keys here"),
        (["bogus.x=1"], "unknown section 'bogus'"),
        (["model.type=cnn"], "'bow' or 'encoder'"),
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
        "a.b": 3, "a.c": 0.5, "a.d": True, "a.e": "hello", "a.f": "x y"}


def test_params_hash_is_stable():
    assert load_params().params_hash() == load_params().params_hash()
    assert load_params().params_hash() != load_params(None, ["train.seed=1"]).params_hash()
