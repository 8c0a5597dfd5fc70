"""Prefect's conventions, checked through its API: deployments named for what they run, a run form with
only what a user sets, descriptions that render, and a prefect.yaml that describes the same deployments as
`trainkite deployments apply`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# What apply and `prefect deploy` must agree on.
COMPARED = (
    "entrypoint",
    "work_pool_name",
    "job_variables",
    "description",
    "tags",
    "concurrency_limit",
    "enforce_parameter_schema",
)


def _read(client, full_name: str) -> dict:
    d = client.read_deployment_by_name(full_name)
    limit = d.global_concurrency_limit
    schedules = sorted((s.schedule.cron, s.schedule.timezone) for s in client.read_deployment_schedules(d.id))
    return {
        "entrypoint": d.entrypoint,
        "work_pool_name": d.work_pool_name,
        "job_variables": d.job_variables,
        "description": d.description,
        "tags": sorted(d.tags),
        "enforce_parameter_schema": d.enforce_parameter_schema,
        "concurrency_limit": limit.limit if limit else None,
        "schedules": schedules,
        "schema": d.parameter_openapi_schema,
        "id": d.id,
    }


@pytest.fixture(scope="module")
def applied_by_cli(prefect_api):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "deployments", "apply", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), proc.stderr


def test_apply_prints_no_warning_about_logs_without_a_flow_run(applied_by_cli):
    _, stderr = applied_by_cli
    assert "without a flow run id" not in stderr, stderr


def test_deployments_and_automation_actions_are_named_for_what_they_run(applied_by_cli):
    from prefect import get_client

    from deployments.automations import RELEASE_AUTOMATION
    from deployments.specs import DEPLOYMENTS, POOLS

    report, _ = applied_by_cli
    pools = {p.name for p in POOLS}
    names = [e["name"] for e in report["deployments"] if e["status"] != "skipped"]
    assert names and all(n.split("/", 1)[1] not in pools for n in names), names
    assert len({s.name for s in DEPLOYMENTS}) == len(DEPLOYMENTS), "a deployment name says which one it is"
    with get_client(sync_client=True) as client:
        [automation] = client.read_automations_by_name(RELEASE_AUTOMATION)
        target = client.read_deployment(automation.actions[0].deployment_id)
    # The UI shows the action as "Run deployment: <name>".
    assert target.name == "release-failed-build"


def test_the_train_form_hides_internal_fields_and_its_descriptions_render(applied_by_cli):
    from prefect import get_client

    from deployments.specs import TRAIN_DEPLOYMENT

    with get_client(sync_client=True) as client:
        schema = _read(client, TRAIN_DEPLOYMENT)["schema"]
    assert set(schema["properties"]) == {"params", "model_id", "tags"}
    assert "deploy" not in schema["definitions"]["Params"]["properties"]
    assert "train" in schema["definitions"]["Params"]["properties"]
    # Outside `code spans` an angle bracket is HTML to the UI's Markdown: "<model name>" disappeared.
    texts = re.findall(r'"description": "((?:[^"\\]|\\.)*)"', json.dumps(schema))
    outside_code = [part for t in texts for part in t.split("`")[::2]]
    assert not [p for p in outside_code if "<" in p or ">" in p]
    assert any("trainkite-&lt;model name&gt;" in t for t in texts)


def test_a_run_with_the_hidden_fields_is_still_accepted(applied_by_cli):
    """The launcher passes `build` and whole params (deploy section included) to the same deployment."""
    from prefect import get_client

    from deployments.specs import TRAIN_DEPLOYMENT
    from params import load_params

    params = load_params(REPO / "params" / "sentiment.toml").model_dump(mode="json")
    with get_client(sync_client=True) as client:
        d = client.read_deployment_by_name(TRAIN_DEPLOYMENT)
        run = client.create_flow_run_from_deployment(
            d.id, parameters={"params": params, "build": None}, tags=["conventions-test"]
        )
        try:
            assert run.parameters["params"]["deploy"] == params["deploy"]
        finally:
            client.delete_flow_run(run.id)


def test_prefect_yaml_is_generated_from_the_specs():
    from deployments.prefect_yaml import PREFECT_YAML, render

    assert PREFECT_YAML.read_text() == render(), "stale: run `python -m deployments.prefect_yaml`"


def test_prefect_deploy_all_creates_the_deployments_apply_creates(applied_by_cli, tmp_path):
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.faults.prefect_server import PrivatePrefectServer
    from cli.prefect_server import seed_database

    seed_database(tmp_path / "prefect")
    server = PrivatePrefectServer(tmp_path / "prefect").start(timeout=240)
    try:
        env = {**os.environ, **server.env()}
        # `prefect deploy` takes pools as given (apply creates them); make them the way a user would.
        for pool, kind in (("trainkite-process", "process"), ("trainkite-gpu-ecs", "ecs")):
            made = subprocess.run(
                [sys.executable, "-m", "prefect", "work-pool", "create", pool, "--type", kind],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert made.returncode == 0, made.stderr[-2000:]
        proc = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=480,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
        names = {f"{_flow_of(d['entrypoint'])}/{d['name']}" for d in declared}
        with temporary_settings(updates={PREFECT_API_URL: server.url}), get_client(sync_client=True) as client:
            ours = {n: _read(client, n) for n in names}
    finally:
        server.stop()
    with get_client(sync_client=True) as client:  # the session server, where the CLI applied
        theirs = {n: _read(client, n) for n in names}
    for name in names:
        for key in (*COMPARED, "schedules"):
            assert ours[name][key] == theirs[name][key], (name, key, ours[name][key], theirs[name][key])


def _flow_of(entrypoint: str) -> str:
    from deployments.specs import DEPLOYMENTS

    return next(s.flow_name for s in DEPLOYMENTS if s.entrypoint == entrypoint)


def test_prefect_yaml_names_exactly_the_deployments_apply_made(applied_by_cli):
    report, _ = applied_by_cli
    declared = yaml.safe_load(Path(REPO / "prefect.yaml").read_text())["deployments"]
    made = sorted(e["name"] for e in report["deployments"] if e["status"] not in ("skipped", "deleted"))
    assert sorted(f"{_flow_of(d['entrypoint'])}/{d['name']}" for d in declared) == made


def test_a_flow_run_started_by_a_worker_writes_wandb_files_to_the_wandb_dir(applied_by_cli, tmp_path):
    from prefect.deployments import run_deployment

    from deployments.specs import TRAIN_DEPLOYMENT
    from tests.buildkite_e2e_helpers import Worker, read_flow_run
    from tests.conftest import small_params
    from tests.process_helpers import wait_for

    home = tmp_path / "home"
    repo_wandb = REPO / "wandb"
    before = set(repo_wandb.rglob("*")) if repo_wandb.exists() else set()
    # A worker host as a user starts one: no W&B settings of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "BUILDKITE"))}
    env.update({"PREFECT_WORKER_QUERY_SECONDS": "2", "TRAINKITE_HOME": str(home)})
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                "trainkite-process",
                "--name",
                f"wandb-dir-test-{os.getpid()}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    worker = Worker(proc, log)
    try:
        wait_for("the worker to start", lambda: "started!" in worker.tail(), 120, proc=proc)
        params = small_params(**{"tracking.backend": "wandb", "artifacts.root": str(home / "artifacts")})
        run = run_deployment(
            TRAIN_DEPLOYMENT, parameters={"params": params.model_dump(mode="json")}, timeout=0, tags=["wandb-dir-test"]
        )
        done = wait_for("the run to finish", lambda: (r := read_flow_run(run.id)).state.is_final() and r, 240)
        assert done.state.is_completed(), (done.state, worker.tail())
    finally:
        worker.stop()
    after = set(repo_wandb.rglob("*")) if repo_wandb.exists() else set()
    assert after == before, f"new files in the repo's wandb/: {sorted(after - before)[:5]}"
    assert list((home / "wandb").rglob("offline-run-*")), "the run's W&B files are in $TRAINKITE_HOME/wandb"
