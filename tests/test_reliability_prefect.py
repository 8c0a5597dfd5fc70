"""Reliability, Prefect side: the API server restarts under a running training, and a Buildkite launch step
retried (even concurrently) still makes one flow run and one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO
from tests.faults.prefect_server import PrivatePrefectServer
from tests.fakes.buildkite_fixtures import ORG, PIPELINE, TOKEN
from tests.process_helpers import finish, repo_checkout, wait_for
from trainkite import manifest as mf
from trainkite.store import LocalStore

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning")

SMALL = ["--set", "preprocess.buckets=4096", "--set", "model.embedding_dim=16", "--set", "tracking.backend='none'"]


@pytest.fixture(scope="module", autouse=True)
def private_server(tmp_path_factory):
    """A second, private Prefect server for the restart test, booting while the launch test runs."""
    server = PrivatePrefectServer(tmp_path_factory.mktemp("private-prefect")).start(wait=False)
    try:
        yield server
    finally:
        server.stop()


def _flow_runs(api_url: str, model_id: str) -> list[dict]:
    resp = requests.post(f"{api_url}/flow_runs/filter", json={"limit": 200}, timeout=10)
    resp.raise_for_status()
    return [r for r in resp.json() if (r.get("parameters") or {}).get("model_id") == model_id]


# --- a retried launch step ----------------------------------------------------------------------------------


@pytest.fixture
def clean_checkout(tmp_path) -> Path:
    return repo_checkout(tmp_path / "checkout")


def test_a_retried_launch_step_makes_one_flow_run_and_one_model(prefect_api, fake_buildkite, clean_checkout, tmp_path):
    """`trainkite launch` run twice at once (an agent lost and the step retried while the first still runs),
    then again after training finished: one flow run (the build's idempotency key), one model, one unblock."""
    from deployments.apply import apply

    apply()
    # Build numbers only grow; start past any earlier session's on a reused server (its idempotency keys).
    with fake_buildkite._lock:
        fake_buildkite._pipelines[(ORG, PIPELINE)]["next"] = time.time_ns() // 1_000_000
    number = fake_buildkite.create_build(ORG, PIPELINE)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKITE")}
    env.update(
        {
            "BUILDKITE": "true",
            "BUILDKITE_BUILD_NUMBER": str(number),
            "BUILDKITE_PIPELINE_SLUG": PIPELINE,
            "BUILDKITE_ORGANIZATION_SLUG": ORG,
            "BUILDKITE_BUILD_CHECKOUT_PATH": str(clean_checkout),
            "BUILDKITE_API_URL": fake_buildkite.url,
            "BUILDKITE_API_TOKEN": TOKEN,
            "TRAINKITE_HOME": str(home),
        }
    )
    launch = [sys.executable, "-m", "cli", "launch", *SMALL, "--set", "train.epochs=2", "--json"]

    def start():
        return subprocess.Popen(launch, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first, retry = start(), start()
    results = [finish(first, 120), finish(retry, 120)]
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    ids = {json.loads(out)["flow_run_id"] for _, out, _ in results}
    assert len(ids) == 1, ids
    flow_run_id = ids.pop()
    model_id = f"{PIPELINE}-{number}"
    assert [r["id"] for r in _flow_runs(prefect_api, model_id)] == [flow_run_id]

    # Run it (what a worker does for the process pool), then retry the launch step once more.
    rc, _, err = finish(
        subprocess.Popen(
            [sys.executable, "-m", "prefect", "flow-run", "execute", flow_run_id],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        240,
    )
    assert rc == 0, err[-3000:]
    rc, out, err = finish(start(), 120)
    assert rc == 0 and json.loads(out)["flow_run_id"] == flow_run_id, err[-3000:]

    runs = _flow_runs(prefect_api, model_id)
    assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED"
    store = LocalStore(home / "artifacts")
    assert [m["model_id"] for m in mf.list_models(store)] == [model_id]
    puts = [r["status"] for r in fake_buildkite.requests_to("PUT", rf"/builds/{number}/jobs/[^/]+/unblock$")]
    assert puts == [200]
    assert fake_buildkite.build(ORG, PIPELINE, number)["meta_data"]["model-id"] == model_id


# --- the API server restarts mid-run -------------------------------------------------------------------------


def test_a_prefect_server_restart_mid_training_does_not_lose_the_run(private_server, tmp_path):
    """A private server (own PREFECT_HOME, port, SQLite DB) is stopped and started again while
    `trainkite train` is in its training loop. The run rides it out (Prefect's client retries connection
    errors with backoff), completes, and the restarted server has its final state: one run, one model."""
    server = private_server
    server.wait_healthy(120)
    try:
        home = tmp_path / "home"
        env = {**os.environ, **server.env(), "TRAINKITE_HOME": str(home)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "train",
                *SMALL,
                "--set",
                "train.epochs=12",
                "--set",
                "train.batch_size=2",
                "--set",
                "train.patience=0",
                "--set",
                "train.checkpoint_interval_s=0",
                "--model-id",
                "restart-1",
                "--json",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        state = home / "artifacts" / "_scratch" / "sentiment" / "restart-1" / "checkpoints" / "last.json"
        wait_for(
            "the first epoch",
            lambda: state.is_file() and json.loads(state.read_text())["epoch"] >= 1,
            180,
            interval=0.05,
            proc=proc,
        )
        epoch_at_stop = json.loads(state.read_text())["epoch"]
        offline = server.restart(down_for=1.0)
        rc, out, err = finish(proc, 240)
        assert rc == 0, err[-3000:]
        print(f"\nserver stopped at epoch {epoch_at_stop}/12, offline {offline:.1f}s; run completed")
        assert epoch_at_stop < 12  # the restart really happened mid-run
        assert json.loads(out)["model_id"] == "restart-1"

        store = LocalStore(home / "artifacts")
        assert [m["model_id"] for m in mf.list_models(store)] == ["restart-1"]
        mf.fetch_model(store, "restart-1")  # whole and verified
        runs = wait_for(
            "the restarted server to show the run's final state",
            lambda: [r for r in _flow_runs(server.url, "restart-1") if r["state"]["type"] == "COMPLETED"],
            30,
            interval=0.05,
        )
        assert len(_flow_runs(server.url, "restart-1")) == 1 and len(runs) == 1
        assert "Traceback" not in err
    finally:
        server.stop()
