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
        alive = _run(url, flow_id, "still-training", ps.run_tag(os.getpid()))
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

        # --force stops it, and the run does not stay Running for good on a server that is gone.
        forced = _tk(home, "server", "stop", "--force", "--json")
        assert forced.returncode == 0 and json.loads(forced.stdout) == {"stopped": True}, forced.stderr
        assert _servers_of(home / "prefect") == []
        restarted = json.loads(_tk(home, "server", "start", "--json").stdout)
        state = _state(restarted["url"], alive)
        assert state["type"] == "CRASHED" and "--force" in state["message"]
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
