"""Test session: one real `prefect server` and one moto server for the whole session, a private
TRAINKITE_HOME, W&B offline. The Prefect server boots in the background while the first tests run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest_plugins = ["tests.fakes.buildkite_fixtures"]

REPO = Path(__file__).resolve().parent.parent
_server: dict = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_configure(config):
    base = Path(tempfile.mkdtemp(prefix="trainkite-tests-"))
    _server["base"] = base
    os.environ["TRAINKITE_HOME"] = str(base / "home")
    os.environ.pop("TRAINKITE_ARTIFACTS", None)
    for k in [k for k in os.environ if k.startswith("BUILDKITE")]:
        os.environ.pop(k)
    os.environ.update(
        {
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_HOME": str(base / "prefect"),
            "PREFECT_LOGGING_EXTRA_LOGGERS": "trainkite",
            "WANDB_MODE": "offline",
        }
    )
    from trainkite.home import configure_quiet_offline_env

    configure_quiet_offline_env()
    if os.environ.get("TRAINKITE_TEST_PREFECT_API_URL"):
        os.environ["PREFECT_API_URL"] = os.environ["TRAINKITE_TEST_PREFECT_API_URL"]
        return
    from cli.prefect_server import seed_database

    seed_database(base / "prefect")  # skips the migrations when scripts/install.sh prepared the template
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    os.environ["PREFECT_API_URL"] = url
    with open(base / "prefect-server.log", "wb") as log:
        _server["proc"] = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PREFECT_UI_ENABLED": "false"},
        )
    _server["url"] = url


def pytest_unconfigure(config):
    proc = _server.get("proc")
    if proc:
        # Send the last flow's queued logs and events while the server still answers: drained at exit
        # instead, they retry against a dead server for over a minute.
        if "prefect" in sys.modules:
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    if _server.get("base") and not os.environ.get("TRAINKITE_KEEP_TEST_HOME"):
        shutil.rmtree(_server["base"], ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """The session's Prefect server URL, once it answers."""
    import requests

    url = os.environ["PREFECT_API_URL"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except requests.RequestException:
            pass
        proc = _server.get("proc")
        if proc and proc.poll() is not None:
            raise RuntimeError((_server["base"] / "prefect-server.log").read_text()[-3000:])
        time.sleep(0.5)
    raise RuntimeError("prefect server did not start in 240 s")


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def aws(moto_server, monkeypatch):
    """Env pointing boto3/awswrangler at the session's moto server, with state reset per test."""
    import requests

    requests.post(f"{moto_server}/moto-api/reset", timeout=10)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


@pytest.fixture()
def tk_home(tmp_path, monkeypatch) -> Path:
    """A fresh TRAINKITE_HOME (artifact store, runs, caches) for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("TRAINKITE_HOME", str(home))
    return home


@pytest.fixture()
def demo_data(tmp_path) -> Path:
    """A copy of the bundled demo data the test may change."""
    dest = tmp_path / "demo"
    shutil.copytree(REPO / "data" / "demo", dest, ignore=shutil.ignore_patterns("*.py", "*.md"))
    return dest


def small_params(**overrides):
    """Demo params shrunk so a whole training run takes about a second."""
    from params import load_params

    # Every data-resolved key pinned, so the model code can be called without the flow's resolution step; batch
    # 16 at rate 4 learns the demo in three epochs (the shipped rate, 0.5, needs more of them).
    ov = {
        "model.type": "bow",
        "train.epochs": 3,
        "train.batch_size": 16,
        "train.learning_rate": 4.0,
        "train.warmup_fraction": 0.0,
        "train.patience": 4,
        "train.refit": False,
        "preprocess.buckets": 4096,
        "model.embedding_dim": 16,
        "tracking.backend": "none",
        # A checkpoint after every epoch, as the tests of crashes and resumes need (the shipped interval is 30 s).
        "train.checkpoint_interval_s": 0,
    }
    ov.update(overrides)
    return load_params(REPO / "params" / "sentiment.toml", ov)


@pytest.fixture()
def params_factory():
    return small_params
