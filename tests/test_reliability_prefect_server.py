"""The local Prefect server under concurrent first starts, a stop while runs are active, and killed runs.

Real processes throughout: `trainkite server start/stop/status` as subprocesses on a fresh TRAINKITE_HOME,
flow runs created through the server's REST API (as a training's own client creates them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO
from cli import prefect_server as ps


def _tk(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**env, "TRAINKITE_HOME": str(home)},
        timeout=timeout,
    )


def _servers_of(prefect_home: Path) -> list[int]:
    """pids of `prefect server start` processes whose PREFECT_HOME is this one."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in cmd and b"start" in cmd and f"PREFECT_HOME={prefect_home}".encode() in env:
            pids.append(int(proc.name))
    return pids


def _run(url: str, flow_id: str, name: str, tag: str) -> str:
    r = requests.post(
        f"{url}/flow_runs/",
        json={"flow_id": flow_id, "name": name, "tags": [tag], "state": {"type": "RUNNING", "name": "Running"}},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()["id"]


def _state(url: str, run_id: str) -> dict:
    return requests.get(f"{url}/flow_runs/{run_id}", timeout=10).json()["state"]


def test_four_first_starts_make_one_server_and_stop_guards_active_runs(tmp_path):
    home = tmp_path / "home"
    try:
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda _: _tk(home, "server", "start", "--json"), range(4)))
        for o in outs:
            assert o.returncode == 0, o.stderr[-2000:]
            assert "Traceback" not in o.stderr
        states = [json.loads(o.stdout) for o in outs]
        assert len({s["pid"] for s in states}) == 1 and all(s["healthy"] for s in states), states
        assert _servers_of(home / "prefect") == [states[0]["pid"]], "exactly one server for this home"
        assert not list((home / "prefect").glob("*.partial")), "no temp database or state file left behind"
        url = states[0]["url"]

        flow_id = requests.post(f"{url}/flows/", json={"name": "reliability-probe"}, timeout=10).json()["id"]
        # A live process that does not report to the API (it only exits on SIGINT), standing in for a run.
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], stderr=subprocess.DEVNULL)
        alive = _run(url, flow_id, "still-training", ps.run_tag(sleeper.pid))
        dead_proc = subprocess.Popen(["true"])
        dead_proc.wait()
        killed = _run(url, flow_id, "was-killed", f"{ps.PID_TAG}{dead_proc.pid}:1@{os.uname().nodename}")

        # A run whose process is gone is recorded as Crashed by the next command that looks.
        status = json.loads(_tk(home, "server", "status", "--json").stdout)
        assert status["reaped"] == ["was-killed"]
        assert _state(url, killed)["type"] == "CRASHED" and "is gone" in _state(url, killed)["message"]

        # A live run: stop refuses, names it, and leaves the server up.
        refused = _tk(home, "server", "stop", "--json")
        assert refused.returncode == 2, refused.stderr
        assert "still-training (RUNNING)" in json.loads(refused.stdout)["error"]
        assert "Traceback" not in refused.stderr
        assert requests.get(f"{url}/health", timeout=5).status_code == 200

        # --force interrupts the run's process, then marks what did not report its own end Crashed: no run
        # stays Running for good on a server that is gone.
        forced = _tk(home, "server", "stop", "--force", "--json")
        assert forced.returncode == 0 and json.loads(forced.stdout) == {"stopped": True}, forced.stderr
        assert sleeper.wait(10) != 0, "the run's process was interrupted"
        assert _servers_of(home / "prefect") == []
        restarted = json.loads(_tk(home, "server", "start", "--json").stdout)
        state = _state(restarted["url"], alive)
        assert state["type"] == "CRASHED" and "--force" in state["message"]
    finally:
        _tk(home, "server", "stop", "--force", timeout=120)


def test_a_server_that_comes_back_records_the_runs_its_killed_life_left_running(tmp_path):
    """The server is SIGKILLed (nothing reaps then) with a run whose process is gone; the next start marks it."""
    import signal

    home = tmp_path / "home"
    try:
        first = json.loads(_tk(home, "server", "start", "--json").stdout)
        url = first["url"]
        flow_id = requests.post(f"{url}/flows/", json={"name": "reliability-probe"}, timeout=10).json()["id"]
        dead = subprocess.Popen(["true"])
        dead.wait()
        orphan = _run(url, flow_id, "left-running", f"{ps.PID_TAG}{dead.pid}:1@{os.uname().nodename}")
        os.killpg(first["pid"], signal.SIGKILL)
        for _ in range(100):
            if not _servers_of(home / "prefect"):
                break
            import time

            time.sleep(0.1)
        second = json.loads(_tk(home, "server", "start", "--json").stdout)
        assert second["pid"] != first["pid"]
        state = _state(second["url"], orphan)
        assert state["type"] == "CRASHED" and "is gone" in state["message"], state
    finally:
        _tk(home, "server", "stop", "--force", timeout=120)


def test_a_damaged_state_file_is_no_server(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINKITE_HOME", str(tmp_path / "home"))
    ps.prefect_home().mkdir(parents=True)
    (ps.prefect_home() / "server.json").write_text("{half")
    assert ps.status() is None


@pytest.mark.parametrize("tag, gone", [(f"{ps.PID_TAG}1:@elsewhere", False), ("trainkite-pid:x", False)])
def test_other_hosts_and_odd_tags_are_left_alone(tag, gone):
    assert ps._process_gone(tag) is gone


def test_stop_force_during_a_training_ends_it_at_once_and_it_reports_its_own_end(tmp_path):
    """A real `trainkite train` against the home's local server: `server stop --force` interrupts it as Ctrl-C
    would, so it ends while the API still answers (Crashed, resume command, exit 130, valid --json) instead of
    retrying a gone API for minutes."""
    import time

    from tests.buildkite_e2e_helpers import SMALL

    home = tmp_path / "home"
    try:
        assert _tk(home, "server", "start", "--json").returncode == 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        train = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "train",
                *(a for o in SMALL for a in ("--set", o)),
                "--set",
                "train.epochs=200",
                "--set",
                "train.batch_size=2",
                "--set",
                "train.patience=0",
                "--set",
                "train.checkpoint_interval_s=0",
                "--model-id",
                "stopped-1",
                "--json",
            ],
            cwd=REPO,
            env={**env, "TRAINKITE_HOME": str(home)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        state = home / "artifacts" / "_scratch" / "sentiment" / "stopped-1" / "checkpoints" / "last.json"
        deadline = time.monotonic() + 240
        while not state.is_file() and time.monotonic() < deadline and train.poll() is None:
            time.sleep(0.1)
        assert state.is_file(), train.communicate()[1][-3000:]

        forced = _tk(home, "server", "stop", "--force", "--json")
        assert forced.returncode == 0, forced.stderr
        out, err = train.communicate(timeout=30)  # ended by the stop, not by minutes of client retries
        assert train.returncode == 130, err[-3000:]
        assert json.loads(out)["error"] == "interrupted" and "--model-id stopped-1" in json.loads(out)["resume"]
        assert "Traceback" not in err
        assert state.is_file(), "the checkpoint a resume needs is kept"

        url = json.loads(_tk(home, "server", "start", "--json").stdout)["url"]
        runs = requests.post(f"{url}/flow_runs/filter", json={"limit": 20}, timeout=10).json()
        (run,) = [r for r in runs if "stopped-1" in json.dumps(r.get("parameters", {}))]
        assert run["state"]["type"] == "CRASHED", run["state"]
        assert "--force" not in (run["state"]["message"] or ""), "the run reported its own end"
    finally:
        _tk(home, "server", "stop", "--force", timeout=120)


def test_a_port_taken_by_another_homes_server_is_not_used_and_the_start_moves(tmp_path, monkeypatch):
    """Two TRAINKITE_HOMEs on one machine (two projects, a benchmark beside a test run): when the other home's
    server binds 4200 between this home's check that it was free and its own server's start, this home's start
    comes up on another port, and its status, reaping and stop never act on the other home's server."""
    other = tmp_path / "other"
    first = json.loads(_tk(other, "server", "start", "--json").stdout)
    try:
        taken = first["port"]
        monkeypatch.setenv("TRAINKITE_HOME", str(tmp_path / "this"))
        for k in [k for k in os.environ if k.startswith("PREFECT_")]:
            monkeypatch.delenv(k)
        free_port = ps._free_port
        monkeypatch.setattr(ps, "_free_port", lambda preferred=4200: taken if preferred else free_port(0))
        mine = ps.start(timeout=180, quiet=True)
        assert mine["port"] != taken and mine["healthy"]
        served = requests.get(f"{mine['url']}/admin/settings", timeout=10).json()["home"]
        assert Path(served).resolve() == (tmp_path / "this" / "prefect").resolve()
        assert not ps._healthy(first["url"]), "the other home's server is not this home's"
        assert ps.stop() is True
        assert requests.get(f"{first['url']}/health", timeout=10).status_code == 200, "the other one still serves"
    finally:
        _tk(other, "server", "stop", "--force")
        monkeypatch.undo()
        ps_pids = _servers_of(tmp_path / "this" / "prefect")
        for pid in ps_pids:
            os.kill(pid, 15)
