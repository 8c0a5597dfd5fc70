"""cli/review.py against the fake `buildkite-agent` (file backend): the gate and the override, on a real
published model whose manifest carries a comparison (the end-to-end build is tests/test_review_evidence_e2e.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cli.review import run_review
from tasks import compare as cp
from tests.fakes.buildkite_fixtures import AGENT_BIN
from trainkite.lineage import file_sha256

pytest_plugins = ["tests.fixtures_models"]


def _model(trained_model_dir: Path, root: Path, model_id: str, verdict: str | None) -> Path:
    from tests.fixtures_models import copy_model  # imported late: pytest_plugins loads the module first

    folder = copy_model(trained_model_dir, root, model_id)
    manifest = json.loads((folder / "manifest.json").read_text())
    if verdict:
        y = [0, 1, 2] * 20
        champ = list(y)
        chal = [(v + 1) % 3 if i < 30 else v for i, v in enumerate(y)] if verdict == cp.WORSE else list(y)
        comparison = {
            **cp.compare(y, champ, chal, ["negative", "neutral", "positive"], texts=["t"] * 60),
            "champion": {
                "model_id": "champ-1",
                "target": "local",
                "since": "2026-11-30T00:00:00+00:00",
                "source": "deployment",
                "set_by": "alice",
            },
            "split": "evaluation",
        }
        manifest["comparison"] = comparison
        manifest["lineage"]["champion"] = {
            "model_id": "champ-1",
            "verdict": comparison["verdict"],
            "allow_worse": False,
        }
        shutil.copyfile(folder / "plots/confusion_evaluation.png", folder / "plots/confusion_champion.png")
        manifest["files"]["plots/confusion_champion.png"] = {
            "sha256": file_sha256(folder / "plots/confusion_champion.png"),
            "size": (folder / "plots/confusion_champion.png").stat().st_size,
        }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return folder


@pytest.fixture
def agent_state(tmp_path, monkeypatch):
    state = tmp_path / "agent.json"
    monkeypatch.setenv("PATH", os.pathsep.join([str(AGENT_BIN), os.environ["PATH"]]))
    monkeypatch.setenv("BUILDKITE_AGENT_FAKE_STATE", str(state))
    for name in ("BUILDKITE_AGENT_FAKE_API", "TRAINKITE_ALLOW_WORSE", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)

    def prepare(folder: Path, verdict: str) -> Path:
        meta = {
            "model-id": folder.name,
            "model-data-path": str(folder),
            "wandb-run-id": "none",
            "comparison-verdict": verdict,
            "training-status": "passed",
        }
        state.write_text(json.dumps({"meta_data": meta, "annotations": []}))
        return state

    return prepare


def _read(state: Path) -> tuple[dict, list[dict]]:
    data = json.loads(state.read_text())
    (note,) = [a for a in data["annotations"] if a["context"] == "trainkite-review"]
    return note, data.get("artifacts", [])


def test_a_significantly_worse_model_fails_review(tmp_path, trained_model_dir, agent_state, capsys):
    state = agent_state(_model(trained_model_dir, tmp_path / "store", "chal-1", cp.WORSE), cp.WORSE)
    assert run_review(env={}) == 1
    note, artifacts = _read(state)
    assert note["style"] == "error" and "Review failed" in note["body"] and "`champ-1`" in note["body"]
    assert {a["path"] for a in artifacts} == {
        "trainkite-review/chal-1/challenger-confusion.png",
        "trainkite-review/chal-1/champion-confusion.png",
    }
    assert "significantly worse" in capsys.readouterr().err


def test_the_override_lets_it_through_and_says_the_lineage_lacks_it(tmp_path, trained_model_dir, agent_state):
    state = agent_state(_model(trained_model_dir, tmp_path / "store", "chal-2", cp.WORSE), cp.WORSE)
    assert run_review(env={"TRAINKITE_ALLOW_WORSE": "1"}) == 0
    note, _ = _read(state)
    assert note["style"] == "warning" and "TRAINKITE_ALLOW_WORSE=1" in note["body"]
    # This model's run did not see the override (its lineage says allow_worse=False): the annotation says so.
    assert "**not** in the lineage" in note["body"]


def test_same_and_no_champion_pass(tmp_path, trained_model_dir, agent_state):
    state = agent_state(_model(trained_model_dir, tmp_path / "store", "chal-3", cp.SAME), cp.SAME)
    assert run_review(env={}) == 0
    note, _ = _read(state)
    assert note["style"] == "success" and "no significant difference" in note["body"]
    state = agent_state(_model(trained_model_dir, tmp_path / "store", "chal-4", None), cp.NO_CHAMPION)
    assert run_review(env={}) == 0
    note, artifacts = _read(state)
    assert note["style"] == "success" and "No champion yet" in note["body"]
    assert [a["path"] for a in artifacts] == ["trainkite-review/chal-4/challenger-confusion.png"]
