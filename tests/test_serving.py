"""The serving container's contract: model.tar.gz → /opt/ml/model → `trainkite-container serve` → HTTP.

The happy path, one refusal per kind and SIGTERM run against the real console script over real HTTP;
the full refusal matrix runs in-process against the same app (Starlette's TestClient).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tasks.package import build_archive, extract_archive, list_archive
from tests.conftest import REPO
from tests.fixtures_models import flush_prefect_logs, model_factory, trained_model_dir  # noqa: F401

pytestmark = [
    # trainkite.* loggers are Prefect "extra loggers" in tests; outside a flow run they warn and log locally.
    pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning"),
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
]

CONTAINER = Path(sys.executable).parent / "trainkite-container"
SIX_MIB = 6 * 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.fixture(scope="module")
def opt_ml_model(trained_model_dir, tmp_path_factory) -> Path:  # noqa: F811
    """The trained model as SageMaker would unpack it: model.tar.gz extracted into a fresh folder."""
    base = tmp_path_factory.mktemp("opt-ml")
    archive = build_archive(trained_model_dir, _manifest(trained_model_dir), base / "model.tar.gz")
    return extract_archive(Path(archive["path"]), base / "model")


class Server:
    def __init__(self, cmd: list[str], model_dir: Path, log: Path, env: dict | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "SM_MODEL_DIR": str(model_dir),
                    "SAGEMAKER_BIND_TO_PORT": str(self.port),
                    **(env or {}),
                },
            )
        self.started = time.monotonic()

    def ping(self) -> requests.Response | None:
        try:
            return requests.get(f"{self.url}/ping", timeout=2)
        except requests.ConnectionError:
            return None

    def wait_ready(self, timeout: float = 60) -> list[int]:
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.ping()
            if r is not None:
                seen.append(r.status_code)
                if r.status_code == 200:
                    return seen
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise AssertionError(f"/ping never answered 200; seen {set(seen)}\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _invoke(url: str, body: bytes, content_type: str = "application/json", **headers) -> requests.Response:
    return requests.post(f"{url}/invocations", data=body, headers={"Content-Type": content_type, **headers}, timeout=30)


# --- no model needed (these run while the session's Prefect server boots) -----------------------------


def test_trainkite_serve_refuses_an_unknown_model(tk_home):
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "no-such-model"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "no model 'no-such-model'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "argv, rc, out",
    [
        (["echo", "exec'd", "as-is"], 0, "exec'd as-is"),
        (["no-such-command-xyz"], 127, "cannot run 'no-such-command-xyz'"),
        (["serve", "--port", "1"], 2, "`serve` takes no arguments"),
        ([], 2, "usage: trainkite-container serve"),
    ],
)
def test_entrypoint_dispatch(argv, rc, out):
    proc = subprocess.run([str(CONTAINER), *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == rc and out in proc.stdout + proc.stderr


def test_entrypoint_refuses_a_bad_setting():
    env = {**os.environ, "TRAINKITE_MAX_INSTANCES": "lots"}
    proc = subprocess.run([str(CONTAINER), "serve"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "TRAINKITE_MAX_INSTANCES='lots'" in proc.stderr


@pytest.mark.parametrize(
    "env, workers",
    [
        ({}, min(len(os.sched_getaffinity(0)), 8)),
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "3"}, 3),
        ({"SAGEMAKER_MODEL_SERVER_WORKERS": "3", "TRAINKITE_SERVE_WORKERS": "2"}, 2),
    ],
)
def test_serve_runs_one_worker_per_cpu_unless_told(env, workers, monkeypatch):
    from serving import entrypoint

    for name in ("SAGEMAKER_MODEL_SERVER_WORKERS", "TRAINKITE_SERVE_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    seen = {}
    monkeypatch.setattr(entrypoint, "run_server", lambda model_dir, **kw: seen.update(kw))
    entrypoint.serve()
    assert seen["workers"] == workers and seen["port"] == int(os.environ.get("SAGEMAKER_BIND_TO_PORT", 8080))


def test_serve_refuses_a_bad_worker_count(monkeypatch, capsys):
    from serving import entrypoint

    monkeypatch.setenv("TRAINKITE_SERVE_WORKERS", "0")
    with pytest.raises(SystemExit) as exc:
        entrypoint.serve()
    assert exc.value.code == 2 and "TRAINKITE_SERVE_WORKERS='0' must be a whole number >= 1" in capsys.readouterr().err


# --- model.tar.gz -----------------------------------------------------------------------------------------


def test_archive_has_files_at_root_and_is_byte_identical(trained_model_dir, tmp_path):  # noqa: F811
    manifest = _manifest(trained_model_dir)
    a = build_archive(trained_model_dir, manifest, tmp_path / "a" / "model.tar.gz")
    time.sleep(1.1)  # a different wall-clock second must not change a byte
    b = build_archive(trained_model_dir, manifest, tmp_path / "b" / "model.tar.gz")
    assert a["sha256"] == b["sha256"] and a["size"] == b["size"]
    names = list_archive(Path(a["path"]))
    served = [f for f in manifest["files"] if not f.startswith(("data/", "plots/"))]
    assert names == sorted([*served, "manifest.json"])
    assert "weights.safetensors" in names and not any(n.startswith(("/", "checkpoints")) for n in names)
    # The training rows never leave the artifact store for an endpoint.
    assert "data/snapshot.parquet" in manifest["files"] and not any(n.startswith("data/") for n in names)


def test_archive_refuses_a_tampered_model(trained_model_dir, tmp_path):  # noqa: F811
    from tests.fixtures_models import copy_model
    from trainkite.errors import IntegrityError

    folder = copy_model(trained_model_dir, tmp_path / "store", "tampered-1")
    with open(folder / "weights.safetensors", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(IntegrityError, match="weights.safetensors"):
        build_archive(folder, _manifest(folder), tmp_path / "model.tar.gz")


# --- the real container process over HTTP ----------------------------------------------------------------


def test_container_serves_refuses_and_stops_on_sigterm(opt_ml_model, tmp_path):
    server = Server([str(CONTAINER), "serve"], opt_ml_model, tmp_path / "serve.log")
    try:
        statuses = server.wait_ready()
        assert set(statuses) <= {503, 200}
        ping = server.ping()
        assert ping.json() == {"status": "ok", "model_id": "base-1"} and ping.headers["X-Model-Id"] == "base-1"

        r = _invoke(
            server.url,
            json.dumps({"instances": ["I love my team", "Pay is awful"]}).encode(),
            **{"X-Amzn-SageMaker-Custom-Attributes": "trace=abc-1"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["X-Model-Id"] == "base-1" and r.headers["Content-Type"] == "application/json"
        assert r.headers["X-Amzn-SageMaker-Custom-Attributes"] == "trace=abc-1"
        body = r.json()
        assert body["model_id"] == "base-1" and len(body["predictions"]) == 2
        for p in body["predictions"]:
            assert p["model_id"] == "base-1" and set(p["scores"]) == {"negative", "neutral", "positive"}
            assert p["label"] == max(p["scores"], key=p["scores"].get)

        r = _invoke(server.url, b'Great team\n"Too much overtime, no thanks"\n', "text/csv")
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2

        r = _invoke(server.url, b'{"instances": [', "application/json")
        assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
        r = _invoke(server.url, b"hello", "text/plain")
        assert r.status_code == 415 and "text/plain" in r.json()["error"]
        r = _invoke(server.url, json.dumps({"instances": ["x"] * 257}).encode())
        assert r.status_code == 413 and "257 instances" in r.json()["error"]
        # One byte over 6 MiB, declared honestly: refused before the body is read, connection stays usable.
        r = _invoke(server.url, b"x" * (SIX_MIB + 1))
        assert r.status_code == 413 and str(SIX_MIB) in r.json()["error"]
        assert server.ping().status_code == 200

        server.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert server.proc.wait(15) == 0
        assert time.monotonic() - t0 < 10
    finally:
        server.stop()
    log = server.log.read_text()
    assert "model base-1 loaded" in log and "Traceback" not in log


def test_tampered_weights_never_become_healthy_and_the_log_names_the_file(trained_model_dir, tmp_path):  # noqa: F811
    from tests.fixtures_models import copy_model

    folder = copy_model(trained_model_dir, tmp_path / "store", "base-1")
    with open(folder / "weights.safetensors", "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(b"\xff" * 8)
    server = Server([sys.executable, "-m", "serving", "serve"], folder, tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + 60
        seen = set()
        while time.monotonic() < deadline:
            r = server.ping()
            if r is not None:
                seen.add(r.status_code)
                if r.json().get("status") == "failed":
                    break
            time.sleep(0.1)
        assert seen == {503}, seen
        assert "weights.safetensors" in r.json()["error"]
        for _ in range(3):  # stays unhealthy: nothing retries its way to a 200
            assert server.ping().status_code == 503
        r = _invoke(server.url, json.dumps({"instances": ["x"]}).encode())
        assert r.status_code == 503
    finally:
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(15)
    assert "weights.safetensors" in server.log.read_text()


def test_trainkite_serve_runs_the_same_app_from_the_store(model_factory, tmp_path):  # noqa: F811
    model_factory("local-serve-1")
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "local-serve-1", "--port", str(port)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        r = _invoke(url, json.dumps({"instances": ["fine"]}).encode())
        assert r.json()["predictions"][0]["model_id"] == "local-serve-1"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


# --- the refusal matrix, in-process -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(opt_ml_model):
    from starlette.testclient import TestClient

    from serving.app import create_app

    app = create_app(model_dir=opt_ml_model, max_instances=8)
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.monotonic() + 60
        while c.get("/ping").status_code != 200:
            assert time.monotonic() < deadline and app.state.model.status != "failed", app.state.model.error
            time.sleep(0.05)
        c.app_state = app.state
        yield c


def _post(client, body, content_type="application/json", **headers):
    if not isinstance(body, bytes | str):
        body = json.dumps(body)
    return client.post("/invocations", content=body, headers={"Content-Type": content_type, **headers})


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"\xff\xfe\x00garbage", 400, "malformed JSON"),
        (b"", 400, "malformed JSON"),
        ({"instances": "just one string"}, 400, "instances is a string; it must be an array of strings"),
        ({"instances": [{"text": "nested"}]}, 400, "instances[0] is an object"),
        ({"instances": ["ok", ["nested"]]}, 400, "instances[1] is an array"),
        ({"instances": ["ok", 3]}, 400, "instances[1] is a number"),
        ({"instances": [None]}, 400, "instances[0] is null"),
        (["a", "b"], 400, "the body is an array"),
        ({"texts": ["a"]}, 400, "missing key 'instances'"),
        ({"instances": ["a"], "extra": 1}, 400, "unknown key(s) 'extra'"),
        ({"instances": []}, 400, "instances is empty"),
        ('{"instances": ["\\ud800"]}', 400, "instances[0] contains an unpaired UTF-16 surrogate"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
        ({"instances": [[[[[[[[["deep"]]]]]]]]]}, 400, "instances[0] is an array"),
        ({"instances": ["x"] * 9}, 413, "9 instances in one request; the limit is 8"),
    ],
)
def test_json_refusals(client, body, status, message):
    r = _post(client, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert r.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "", "text/csv; charset=latin-1"]
)
def test_unsupported_content_type_is_415(client, content_type):
    r = _post(client, b"hello", content_type)
    assert r.status_code == 415 and "error" in r.json()


def test_body_size_limit_counts_declared_and_actual_bytes(client):
    r = _post(client, b"x" * (SIX_MIB + 1))
    assert r.status_code == 413 and f"{SIX_MIB + 1} bytes" in r.json()["error"]
    r = client.post(
        "/invocations", content=b"{}", headers={"Content-Type": "application/json", "Content-Length": str(SIX_MIB + 1)}
    )
    assert r.status_code == 413

    def chunks():  # no Content-Length at all: only counting what arrives catches it
        for _ in range(7):
            yield b" " * (1024 * 1024)

    r = client.post("/invocations", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "more than" in r.json()["error"]
    # exactly at the limit is accepted (and scored off the event loop)
    text = "good " * ((SIX_MIB - 40) // 5 // 4)
    body = json.dumps({"instances": [text] * 4}).encode()
    body += b" " * (SIX_MIB - len(body))
    assert len(body) == SIX_MIB
    r = _post(client, body)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 4


def test_csv_one_text_per_line(client):
    r = _post(
        client,
        '\ufeffGreat team\r\n"Too much overtime, no thanks"\nunquoted, with a comma\n\n'
        "last line without newline".encode(),
        "text/csv; charset=utf-8",
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 5  # the blank line keeps its place: outputs align with lines
    assert _post(client, b"\xff\xfe bad", "text/csv").status_code == 400
    assert "instances is empty" in _post(client, b"", "text/csv").json()["error"]
    assert "2 fields" in _post(client, b'"a","b"\n', "text/csv").json()["error"]


def test_headers_unknown_routes_and_bugs_are_json(client, monkeypatch):
    r = _post(client, {"instances": ["hi"]}, **{"X-Amzn-SageMaker-Custom-Attributes": "c=1"})
    assert r.headers["X-Model-Id"] == "base-1" and r.headers["X-Amzn-SageMaker-Custom-Attributes"] == "c=1"
    assert (
        _post(client, b"{", **{"X-Amzn-SageMaker-Custom-Attributes": "c=2"}).headers[
            "X-Amzn-SageMaker-Custom-Attributes"
        ]
        == "c=2"
    )
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json()
    r = client.get("/invocations")
    assert r.status_code == 405 and "error" in r.json()

    def boom(texts):
        raise RuntimeError("internal detail /secret/path")

    monkeypatch.setattr(client.app_state.model.predictor, "predict", boom)
    r = _post(client, {"instances": ["hi"]})
    assert r.status_code == 500 and r.json() == {"error": "internal error"}


def test_max_instances_from_env(opt_ml_model, monkeypatch):
    from starlette.testclient import TestClient

    from serving.app import create_app
    from trainkite.errors import UserInputError

    monkeypatch.setenv("TRAINKITE_MAX_INSTANCES", "2")
    app = create_app(model_dir=opt_ml_model)
    with TestClient(app) as c:
        while app.state.model.status == "loading":
            time.sleep(0.05)
        assert _post(c, {"instances": ["a", "b"]}).status_code == 200
        assert _post(c, {"instances": ["a", "b", "c"]}).status_code == 413
    monkeypatch.setenv("TRAINKITE_MAX_INSTANCES", "0")
    with pytest.raises(UserInputError, match="TRAINKITE_MAX_INSTANCES"):
        create_app(model_dir=opt_ml_model)


def test_startup_does_not_wait_for_the_model(opt_ml_model, monkeypatch):
    """The lifespan returns at once (uvicorn binds the socket after it); /ping says 503 until loaded."""
    import threading

    from starlette.testclient import TestClient

    import models.lean_predictor
    from serving.app import create_app

    release = threading.Event()
    real = models.lean_predictor.load_predictor

    def slow(folder, manifest):
        release.wait(30)
        return real(folder, manifest)

    monkeypatch.setattr(models.lean_predictor, "load_predictor", slow)
    app = create_app(model_dir=opt_ml_model)
    t0 = time.monotonic()
    with TestClient(app) as c:
        assert time.monotonic() - t0 < 0.25
        r = c.get("/ping")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert _post(c, {"instances": ["a"]}).status_code == 503
        release.set()
        while app.state.model.status == "loading":
            time.sleep(0.02)
        assert c.get("/ping").status_code == 200


def test_with_several_workers_ping_is_healthy_only_when_every_live_worker_has_loaded(opt_ml_model, tmp_path):
    from starlette.testclient import TestClient

    from serving.app import _started, create_app

    app = create_app(model_dir=opt_ml_model, ready_dir=str(tmp_path), workers=2)
    with TestClient(app) as c:
        while app.state.model.status == "loading":
            time.sleep(0.02)
        assert [p.name for p in tmp_path.iterdir()] == [str(os.getpid())]
        r = c.get("/ping")
        assert r.status_code == 503 and r.json() == {
            "status": "loading",
            "error": "1 of 2 workers have loaded the model",
        }
        # A worker that crashed after loading (uvicorn restarts it under a new pid) left its file: not loaded.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        (tmp_path / str(dead.pid)).write_text("1")
        assert c.get("/ping").status_code == 503
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            (tmp_path / str(other.pid)).write_text("0")  # a reused pid: another process's start time
            assert c.get("/ping").json()["error"] == "1 of 2 workers have loaded the model"
            (tmp_path / str(other.pid)).write_text(_started(other.pid))
            assert c.get("/ping").status_code == 200
        finally:
            other.kill()
            other.wait()
        assert c.get("/ping").status_code == 503


def test_wrong_model_for_the_container_never_becomes_healthy(opt_ml_model):
    from starlette.testclient import TestClient

    from serving.app import create_app

    app = create_app(model_dir=opt_ml_model, expected_model_id="some-other-model")
    with TestClient(app) as c:
        while app.state.model.status == "loading":
            time.sleep(0.02)
        r = c.get("/ping")
        assert r.status_code == 503 and "some-other-model" in r.json()["error"]
