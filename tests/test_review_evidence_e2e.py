"""The evidence at Deploy?, end to end: buildkite/pipeline.yml's steps against the fake Buildkite, the session's
Prefect server and a real process worker; the champion is the model an earlier build deployed locally.

No champion yet: review says so and passes. Then a challenger that barely trained is significantly worse:
the block fields carry the verdict, review's annotation holds both model IDs, the deltas and the verdict,
both confusion matrices were uploaded as build artifacts and are embedded, and review fails; the same build
with TRAINKITE_ALLOW_WORSE=1 passes review, and the model's lineage records the override.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.buildkite_e2e_helpers import SMALL, PipelineRun
from tests.fakes.buildkite_fixtures import ORG, PIPELINE

pytest_plugins = ["tests.fixtures_buildkite_e2e"]

TRAINING_TIMEOUT = 180
WEAK = [*SMALL, "train.epochs=1", "train.learning_rate=0.001"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def new_run(bk_fake, process_worker, e2e_home, clean_checkout):
    def make(overrides: list[str], **env: str) -> PipelineRun:
        number = bk_fake.create_build(ORG, PIPELINE)
        return PipelineRun(bk_fake, number, e2e_home, clean_checkout, {"TRAINKITE_SET": "\n".join(overrides), **env})

    return make


def _trained(run: PipelineRun, worker) -> dict[str, str]:
    result = run.run_step("launch_training")
    assert result.returncode == 0, result.stderr[-3000:]
    try:
        meta = run.wait_unblocked("training_finished", TRAINING_TIMEOUT)
    except AssertionError:
        raise AssertionError(worker.tail()) from None
    assert meta["training-status"] == "passed", meta
    return meta


def _artifacts(run: PipelineRun) -> dict[str, bytes]:
    return {a["path"]: a["content"] for a in run.fake.artifacts(ORG, PIPELINE, run.number)}


def _manifest(meta: dict[str, str]) -> dict:
    return json.loads((Path(meta["model-data-path"]) / "manifest.json").read_text())


def test_review_compares_with_the_deployed_champion_and_gates_a_worse_model(new_run, process_worker):
    # 1. No champion yet: the annotation says so, review passes, the challenger's matrix is still uploaded.
    first = new_run(SMALL)
    meta = _trained(first, process_worker)
    assert meta["comparison-verdict"] == "no champion" and meta["champion-model-id"] == "none"
    review = first.run_step("review")
    assert review.returncode == 0, review.stderr[-3000:]
    note = first.annotations()["trainkite-review"]
    assert note["style"] == "success" and "No champion yet" in note["body"]
    assert "| evaluation_accuracy |" in note["body"] and meta["model-data-path"] in note["body"]
    uploaded = _artifacts(first)
    assert list(uploaded) == [f"trainkite-review/{meta['model-id']}/challenger-confusion.png"]
    assert (
        uploaded[next(iter(uploaded))]
        == (Path(meta["model-data-path"]) / "plots/confusion_evaluation.png").read_bytes()
    )
    assert "No champion yet" in first.annotations()["trainkite-training"]["body"]

    # It goes live locally, through the pipeline's own deploy step: now it is the champion.
    first.approve("deploy")
    deploy = first.run_step("deploy_model", timeout=240)
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    champion = meta["model-id"]

    # 2. A challenger that barely trained: significantly worse, review fails.
    worse = new_run(WEAK)
    wmeta = _trained(worse, process_worker)
    assert wmeta["comparison-verdict"] == "worse" and wmeta["champion-model-id"] == champion
    review = worse.run_step("review")
    assert review.returncode == 1
    assert "significantly worse than the champion" in review.stderr
    note = worse.annotations()["trainkite-review"]
    body = note["body"]
    assert note["style"] == "error"
    assert f"champion `{champion}`" in body and f"challenger `{wmeta['model-id']}`" in body
    assert "**Verdict: :x: worse**" in body and "McNemar exact p = " in body and "paired bootstrap CI [" in body
    comparison = _manifest(wmeta)["comparison"]
    assert f"| macro_f1 | {comparison['metrics']['champion']['macro_f1']:.4f} | " in body
    assert f"{comparison['deltas']['macro_f1']:+.4f} |" in body and "| F1 `neutral` |" in body
    assert "champion right, challenger wrong" in body  # the flipped examples
    images = {f"trainkite-review/{wmeta['model-id']}/{who}-confusion.png" for who in ("champion", "challenger")}
    uploaded = _artifacts(worse)
    assert set(uploaded) == images and all(content.startswith(PNG) for content in uploaded.values())
    for path in images:
        assert f'<img src="artifact://{path}"' in body
    assert (
        uploaded[f"trainkite-review/{wmeta['model-id']}/champion-confusion.png"]
        == (Path(wmeta["model-data-path"]) / "plots/confusion_champion.png").read_bytes()
    )
    assert "W&B: tracking was off" in body
    # The flow's own annotation already carried the comparison.
    assert "worse" in worse.annotations()["trainkite-training"]["body"]

    # 3. The same model with the build's explicit override: review passes, the lineage records it.
    allowed = new_run(WEAK, TRAINKITE_ALLOW_WORSE="1")
    ameta = _trained(allowed, process_worker)
    assert ameta["comparison-verdict"] == "worse"
    review = allowed.run_step("review")
    assert review.returncode == 0, review.stderr[-3000:]
    note = allowed.annotations()["trainkite-review"]
    assert note["style"] == "warning" and "TRAINKITE_ALLOW_WORSE=1" in note["body"]
    assert "recorded in the lineage" in note["body"]
    assert _manifest(ameta)["lineage"]["champion"] == {"model_id": champion, "verdict": "worse", "allow_worse": True}
