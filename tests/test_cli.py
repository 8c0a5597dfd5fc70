"""The CLI as a user runs it: a real process, one JSON object on stdout, clean refusals."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SMALL = ["--set", "train.epochs=2", "--set", "preprocess.buckets=4096", "--set", "model.embedding_dim=16"]


def tk(*args, env=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def trained(prefect_api, tmp_path_factory):
    home = tmp_path_factory.mktemp("cli-home")
    env = {"TRAINKITE_HOME": str(home)}
    out = tk("train", *SMALL, "--json", env=env)
    return json.loads(out.stdout), env


def test_train_json_is_one_object(trained):
    result, _ = trained
    assert {"model_id", "artifact_uri", "metrics"} <= set(result)
    assert result["model_id"].startswith("local-")


def test_predict_text_and_csv(trained, tmp_path):
    result, env = trained
    mid = result["model_id"]
    out = json.loads(
        tk("predict", mid, "--text", "I love the new hybrid policy", "--text", "Pay is awful", "--json", env=env).stdout
    )
    assert len(out["predictions"]) == 2
    for p in out["predictions"]:
        assert p["model_id"] == mid and set(p["scores"]) == {"negative", "neutral", "positive"}
        assert abs(sum(p["scores"].values()) - 1) < 1e-4
    # Printed for a person: one JSON line per text, the text as written, not as \u escapes.
    human = tk("predict", mid, "--text", "Équipe géniale, 很好", env=env).stdout.strip()
    assert '"text": "Équipe géniale, 很好"' in human and json.loads(human)["model_id"] == mid
    src = tmp_path / "in.csv"
    src.write_text('id,text\n1,Great team\n2,"Too much overtime, no thanks"\n')
    dst = tmp_path / "out.csv"
    tk("predict", mid, "--input", str(src), "--output", str(dst), env=env)
    import pandas as pd

    df = pd.read_csv(dst)
    assert list(df.columns) == ["id", "text", "label", "model_id", "score_negative", "score_neutral", "score_positive"]
    assert (df["model_id"] == mid).all()


def test_models_and_show(trained):
    result, env = trained
    listed = json.loads(tk("models", "--json", env=env).stdout)
    assert [m["model_id"] for m in listed["models"]] == [result["model_id"]]
    shown = json.loads(tk("show", result["model_id"], "--json", env=env).stdout)
    assert shown["model_id"] == result["model_id"] and "weights.safetensors" in shown["files"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--set", "train.epochs=-1"], "train.epochs"),
        (["train", "--set", "train.epoch=3"], "unknown key"),
        (["train", "--params", "nope.toml"], "not found"),
        (["predict", "../etc", "--text", "x"], "invalid model ID"),
        (["predict", "no-such-model", "--text", "x"], "no model 'no-such-model'"),
        (["show", "a/b"], "invalid model ID"),
        (["predict", "x"], "give either --text"),
        (["train", "--params-json", "{not json"], "--params-json is not valid JSON"),
        (["train", "--params-json", '{"train": {"epochs": 0}}'], "train.epochs"),
    ],
)
def test_refusals_exit_2_without_traceback(args, needle, tmp_path):
    proc = tk(*args, env={"TRAINKITE_HOME": str(tmp_path)}, check=False)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = tk(*args, "--json", env={"TRAINKITE_HOME": str(tmp_path)}, check=False)
    assert proc.returncode == 2 and needle in json.loads(proc.stdout)["error"]


def test_a_run_publishes_under_the_id_asked_for_else_its_builds_else_a_new_one():
    from types import SimpleNamespace

    from trainkite.errors import UserInputError
    from trainkite.ids import resolve_model_id

    build = SimpleNamespace(model_id="trainkite-42")
    assert resolve_model_id("retry-7", build) == "retry-7"
    assert resolve_model_id(None, build) == "trainkite-42"
    assert resolve_model_id("", None).startswith("local-")
    with pytest.raises(UserInputError, match="invalid model ID '../x'"):
        resolve_model_id("../x", build)


def test_a_new_table_with_its_own_labels_trains_from_the_shipped_file(trained, tmp_path):
    """A team's first run: the shipped params, their table, their labels. Refused with the fix named, then run."""
    _, env = trained
    src = tmp_path / "mine"
    src.mkdir()
    lines = ["text,label"] + [
        f"ticket {i} {'refund please' if i % 2 else 'love it'},{'angry' if i % 2 else 'happy'}" for i in range(60)
    ]
    (src / "tickets.csv").write_text("\n".join(lines) + "\n")
    args = ["train", "--set", f'data.path="{src}"', "--set", 'data.query="SELECT text, label FROM tickets"']
    args += ["--set", 'evaluation.query=""', "--set", 'tracking.backend="none"']
    refused = tk(*args, env=env, check=False)
    assert refused.returncode == 2
    assert "are not in data.labels" in refused.stderr and "--set data.labels=null" in refused.stderr
    out = json.loads(tk(*args, "--set", "data.labels=null", "--json", env=env).stdout)
    shown = json.loads(tk("show", out["model_id"], "--json", env=env).stdout)
    assert shown["labels"] == ["angry", "happy"]
