"""The champion at evaluation, through the real train flow: aliases from the deployment log and from
`trainkite alias set`, the comparison in metrics.json and the manifest, the champion's confusion matrix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import aliases, compare as cp, deploy_log
from tests.conftest import REPO, small_params
from trainkite.store import LocalStore

pytest_plugins = ["tests.fixtures_models"]

# A challenger that barely trained: it predicts nearly one class, so on the 200 human-labelled rows it is
# significantly worse than a model trained properly.
WEAK = {"train.epochs": 1, "train.learning_rate": 0.001}


def _train(root: Path, model_id: str, **overrides) -> dict:
    from flows.train import train

    train(params=small_params(**{"artifacts.root": str(root), **overrides}), model_id=model_id)
    return json.loads((root / "sentiment" / model_id / "manifest.json").read_text())


def _cli(*args: str, env_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRAINKITE_HOME": str(env_home)}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_aliases_come_from_deploys_and_alias_set_newest_wins(tmp_path, trained_model_dir):
    from tests.fixtures_models import copy_model

    root = tmp_path / "store"
    for mid in ("m-1", "m-2", "m-3"):
        copy_model(trained_model_dir, root, mid)
    store = LocalStore(root)
    assert aliases.champion(store, "sentiment", "sagemaker") is None
    deploy_log.write(
        store,
        deploy_log.new_record(
            model_id="m-1",
            model_name="sentiment",
            target="sagemaker",
            endpoint="trainkite-sentiment",
            status="deployed",
            approved_by="alice",
            time="2026-11-01T10:00:00+00:00",
        ),
    )
    deploy_log.write(
        store,
        deploy_log.new_record(
            model_id="m-2",
            model_name="sentiment",
            target="sagemaker",
            endpoint="trainkite-sentiment",
            status="failed",
            time="2026-11-02T10:00:00+00:00",
        ),
    )
    got = aliases.champion(store, "sentiment", "sagemaker")
    assert (got["model_id"], got["set_by"], got["source"]) == ("m-1", "alice", "deployment")

    rec = aliases.set_alias(store, "champion", "m-3", target="sagemaker", set_by="bob", reason="manual rollback")
    got = aliases.champion(store, "sentiment", "sagemaker")
    assert (got["model_id"], got["set_by"], got["source"], got["reason"]) == (
        "m-3",
        "bob",
        "alias set",
        "manual rollback",
    )
    assert got["since"] == rec["time"]
    assert aliases.champion(store, "sentiment", "local") is None
    # Without a target asked for, training compares with production first, then local.
    assert aliases.champion_for_training(store, "sentiment", env={})["model_id"] == "m-3"
    assert aliases.champion_for_training(store, "sentiment", env={"TRAINKITE_DEPLOY_TARGET": "local"}) is None

    with pytest.raises(Exception, match="no model 'nope'"):
        aliases.set_alias(store, "champion", "nope", target="sagemaker", set_by="bob")
    with pytest.raises(Exception, match="alias 'best'"):
        aliases.set_alias(store, "best", "m-1", target="sagemaker", set_by="bob")


def test_alias_cli_sets_and_lists_with_who_and_when(tmp_path, trained_model_dir):
    from tests.fixtures_models import copy_model

    home = tmp_path / "home"
    copy_model(trained_model_dir, home / "artifacts", "cli-1")
    out = _cli("alias", "set", "champion", "cli-1", "--target", "local", "--by", "carol", "--json", env_home=home)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert (record["model_id"], record["set_by"], record["target"]) == ("cli-1", "carol", "local")
    assert record["time"]

    out = _cli("models", "--aliases", "--json", env_home=home)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)["aliases"]
    assert (row["model_name"], row["target"], row["alias"], row["model_id"], row["set_by"]) == (
        "sentiment",
        "local",
        "champion",
        "cli-1",
        "carol",
    )
    human = _cli("models", "--aliases", env_home=home)
    assert "cli-1" in human.stdout and "carol" in human.stdout
    # The plain listing still works.
    assert json.loads(_cli("models", "--json", env_home=home).stdout)["models"][0]["model_id"] == "cli-1"

    bad = _cli("alias", "set", "champion", "../x", "--json", env_home=home)
    assert bad.returncode == 2 and "error" in json.loads(bad.stdout)
    bad = _cli("alias", "set", "champion", "cli-1", "--target", "moon", env_home=home)
    assert bad.returncode == 2 and "moon" in bad.stderr and "Traceback" not in bad.stderr
    assert len(list((home / "artifacts" / "_aliases").iterdir())) == 1, "a refused call writes nothing"


def test_no_champion_then_identical_then_worse(prefect_api, tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINKITE_DEPLOY_TARGET", raising=False)
    monkeypatch.delenv("TRAINKITE_ALLOW_WORSE", raising=False)
    root = tmp_path / "store"
    store = LocalStore(root)

    first = _train(root, "cmp-1")
    assert first["comparison"]["verdict"] == cp.NO_CHAMPION and first["comparison"]["champion"] is None
    assert first["lineage"]["champion"] == {"model_id": None, "verdict": cp.NO_CHAMPION, "allow_worse": False}

    aliases.set_alias(store, "champion", "cmp-1", target="local", set_by="tester")
    twin = _train(root, "cmp-2")  # same params, data and seed: the same weights, the same predictions
    comp = twin["comparison"]
    assert comp["verdict"] == cp.SAME and comp["champion"]["model_id"] == "cmp-1"
    assert comp["split"] == "evaluation" and comp["n"] == twin["lineage"]["data"]["counts"]["evaluation"]
    assert comp["mcnemar"]["p_value"] == 1.0 and comp["deltas"]["macro_f1"] == 0.0
    assert "plots/confusion_champion.png" in twin["files"]
    metrics = json.loads((root / "sentiment" / "cmp-2" / "metrics.json").read_text())
    assert metrics["comparison"] == comp

    weak = _train(root, "cmp-3", **WEAK)
    comp = weak["comparison"]
    assert comp["verdict"] == cp.WORSE, cp.evidence_line(comp)
    assert comp["deltas"]["macro_f1"] < 0 and comp["bootstrap"]["ci_high"] < 0
    assert comp["flipped"]["broken_total"] > 0 and len(comp["flipped"]["broken"]) <= cp.FLIPPED_CAP
    assert all(f["text"] and f["champion"] == f["label"] for f in comp["flipped"]["broken"])
    assert set(comp["per_class_f1"]) == {"negative", "neutral", "positive"}
    assert weak["lineage"]["champion"] == {"model_id": "cmp-1", "verdict": cp.WORSE, "allow_worse": False}

    # Same commit, params, data and champion: the same verdict and interval.
    again = _train(tmp_path / "other", "cmp-1")
    aliases.set_alias(LocalStore(tmp_path / "other"), "champion", "cmp-1", target="local", set_by="tester")
    weak_again = _train(tmp_path / "other", "cmp-3", **WEAK)
    assert again["comparison"]["verdict"] == cp.NO_CHAMPION
    for key in ("verdict", "bootstrap", "mcnemar", "deltas", "flipped"):
        assert weak_again["comparison"][key] == comp[key]

    monkeypatch.setenv("TRAINKITE_ALLOW_WORSE", "1")
    overridden = _train(root, "cmp-4", **WEAK)
    assert overridden["lineage"]["champion"] == {"model_id": "cmp-1", "verdict": cp.WORSE, "allow_worse": True}
