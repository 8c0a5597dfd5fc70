"""buildkite/pipeline.yml: valid for Buildkite, and shaped the way the flow and the step scripts expect."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tasks.notify import failure_fields, success_fields

REPO = Path(__file__).resolve().parent.parent
PIPELINE = REPO / "buildkite" / "pipeline.yml"
SCHEMA = Path(__file__).parent / "data" / "buildkite-schema.json"
UNBLOCK_FIELDS = [
    "model-id",
    "model-data-path",
    "wandb-run-id",
    "model-env",
    "docker-image",
    "metrics",
    "comparison-verdict",
    "champion-model-id",
    "training-status",
]


@pytest.fixture(scope="module")
def steps() -> list[dict]:
    return yaml.safe_load(PIPELINE.read_text())["steps"]


def _by_key(steps: list[dict]) -> dict[str, dict]:
    return {s["key"]: s for s in steps}


def test_valid_against_the_vendored_buildkite_schema():
    doc = yaml.safe_load(PIPELINE.read_text())
    errors = sorted(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_valid_against_check_jsonschemas_builtin_schema():
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install -e .[dev])")
    out = subprocess.run(
        [exe, "--builtin-schema", "vendor.buildkite", str(PIPELINE)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_vendored_schema_rejects_what_buildkite_rejects(steps):
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    bad = json.loads(json.dumps(steps))
    _by_key(bad)["training_finished"]["blocked_state"] = "paused"
    assert list(validator.iter_errors({"steps": bad}))


def test_step_order_and_dependencies(steps):
    assert [s["key"] for s in steps] == ["launch_training", "training_finished", "review", "deploy", "deploy_model"]
    assert ["block" in s for s in steps] == [False, True, False, True, False]
    keys = _by_key(steps)
    assert keys["training_finished"]["depends_on"] == "launch_training"
    assert keys["review"]["depends_on"] == "training_finished"
    assert keys["deploy"]["depends_on"] == "review"
    assert keys["deploy_model"]["depends_on"] == "deploy"


def test_training_finished_block(steps):
    block = _by_key(steps)["training_finished"]
    assert block["blocked_state"] == "running"
    assert block["allowed_teams"] == ["ml-bot"]
    fields = block["fields"]
    assert [f["key"] for f in fields] == UNBLOCK_FIELDS
    assert all(f.get("required", True) for f in fields)
    status = next(f for f in fields if f["key"] == "training-status")
    assert {o["value"] for o in status["options"]} == {"passed", "failed"}


def test_the_flow_sends_exactly_the_block_fields(steps):
    keys = [f["key"] for f in _by_key(steps)["training_finished"]["fields"]]
    ok = success_fields(model_id="m", artifact_uri="/a", wandb_run_id=None, docker_image=None, metrics_line="x=1")
    assert sorted(ok) == sorted(keys)
    assert sorted(failure_fields("m", "FAILED: boom")) == sorted(keys)


def test_deploy_block_is_for_approvers(steps):
    block = _by_key(steps)["deploy"]
    assert block["allowed_teams"] == ["ml-approvers"]
    assert "fields" not in block


def test_commands_and_step_scripts(steps):
    keys = _by_key(steps)
    assert keys["launch_training"]["command"].startswith("trainkite launch")
    for key, script in (("review", "buildkite/steps/review.sh"), ("deploy_model", "buildkite/steps/deploy.sh")):
        assert keys[key]["command"] == script
        path = REPO / script
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert path.stat().st_mode & 0o111, f"{script} is not executable"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    deploy = (REPO / "buildkite/steps/deploy.sh").read_text()
    assert 'trainkite deploy "$model_id"' in deploy and "--approved-by" in deploy


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Buildkite's upload-time `${VAR:-default}` (shared/reference/buildkite.md 2.4), enough for these values."""
    import re

    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: env.get(m.group(1)) or m.group(2), value)


def test_deploys_only_from_main_unless_configured(steps):
    keys = _by_key(steps)
    for key in ("deploy", "deploy_model"):
        branches = keys[key]["branches"]
        assert _interpolate(branches, {}) == "main"
        assert _interpolate(branches, {"TRAINKITE_DEPLOY_BRANCHES": "main release/*"}) == "main release/*"
    assert "branches" not in keys["review"] and "branches" not in keys["launch_training"]


def test_one_deploy_at_a_time_per_endpoint(steps):
    step = _by_key(steps)["deploy_model"]
    assert step["concurrency"] == 1
    group = step["concurrency_group"]
    assert _interpolate(group, {}) == "trainkite/deploy/sagemaker/trainkite-sentiment"
    other = _interpolate(group, {"TRAINKITE_DEPLOY_ENDPOINT": "trainkite-topic"})
    assert other == "trainkite/deploy/sagemaker/trainkite-topic"
    # Block steps take no part in concurrency groups (reference pitfall 15).
    assert all("concurrency_group" not in s for s in steps if "block" in s)
