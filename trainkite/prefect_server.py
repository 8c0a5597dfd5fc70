"""One local Prefect server per TRAINKITE_HOME, started on first use and reused.

Prefect's ephemeral mode starts a server in every process (15-30 s here); a background
`prefect server start` is paid for once. `PREFECT_API_URL`, when set, always wins.
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

import requests

from trainkite.errors import TrainkiteError
from trainkite.home import home


def _state_file() -> Path:
    return home() / "prefect" / "server.json"


def prefect_home() -> Path:
    return home() / "prefect"


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _free_port(preferred: int = 4200) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise TrainkiteError("no free port for the Prefect server")


def status() -> dict | None:
    f = _state_file()
    if not f.is_file():
        return None
    state = json.loads(f.read_text())
    if not _alive(state["pid"]):
        return None
    state["healthy"] = _healthy(state["url"])
    return state


def start(timeout: float = 180.0, quiet: bool = False) -> dict:
    current = status()
    if current and current["healthy"]:
        return current
    if current:  # started but not yet healthy (another command is starting it)
        return _wait(current, timeout)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    ph = prefect_home()
    ph.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_HOME": str(ph), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "PREFECT_API_URL": url}
    with open(ph / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    state = {"pid": proc.pid, "url": url, "port": port, "log": str(ph / "server.log")}
    _state_file().write_text(json.dumps(state))
    if not quiet:
        print(f"Starting a local Prefect server at {url[:-4]} (once; stop it with `trainkite server stop`)",
              file=sys.stderr)
    return _wait(state, timeout)


def _wait(state: dict, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy(state["url"]):
            return {**state, "healthy": True}
        if not _alive(state["pid"]):
            raise TrainkiteError(f"the local Prefect server exited; see {state.get('log')}")
        time.sleep(0.5)
    raise TrainkiteError(f"the local Prefect server did not answer within {timeout:.0f}s; see {state.get('log')}")


def stop() -> bool:
    current = status()
    f = _state_file()
    if not current:
        f.unlink(missing_ok=True)
        return False
    try:
        os.killpg(current["pid"], signal.SIGTERM)
    except OSError:
        pass
    for _ in range(40):
        if not _alive(current["pid"]):
            break
        time.sleep(0.25)
    else:
        try:
            os.killpg(current["pid"], signal.SIGKILL)
        except OSError:
            pass
    f.unlink(missing_ok=True)
    return True


def ensure_api() -> str:
    """PREFECT_API_URL if set, else the local background server (started if needed)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    state = start()
    os.environ["PREFECT_API_URL"] = state["url"]
    os.environ.setdefault("PREFECT_HOME", str(prefect_home()))
    if "prefect.settings" in sys.modules:
        # Prefect read its settings when it was imported; without this the process would still start
        # an ephemeral server (15-30 s) instead of using ours.
        from prefect.settings import PREFECT_API_URL, temporary_settings

        _held.append(temporary_settings(updates={PREFECT_API_URL: state["url"]}))
        _held[-1].__enter__()
    return state["url"]


# Settings contexts entered by ensure_api, kept open for the life of the process.
_held: list = []
