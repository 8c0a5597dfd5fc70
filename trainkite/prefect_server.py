"""One local Prefect server per TRAINKITE_HOME, started on first use and reused.

Prefect's ephemeral mode starts a server in every process (15-30 s here); a background
`prefect server start` is paid for once. `PREFECT_API_URL`, when set, always wins.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from trainkite.errors import TrainkiteError
from trainkite.home import home


def _state_file() -> Path:
    return home() / "prefect" / "server.json"


def prefect_home() -> Path:
    return home() / "prefect"


def database_template() -> Path:
    """Where the empty, migrated Prefect database for this Prefect version is kept (one per machine)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "trainkite" / f"prefect-{importlib.metadata.version('prefect')}.db"


def prepare_database() -> Path:
    """Run Prefect's own migrations once into an empty database kept as a template.

    Migrating a new SQLite database is most of a first server start (6-7 s of 10 here); every new
    TRAINKITE_HOME (and test session) then starts from a copy. The install script calls this.
    """
    template = database_template()
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
        env = {**os.environ, "PREFECT_HOME": tmp, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        done = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"], env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise TrainkiteError(f"preparing the Prefect database failed: {done.stderr.strip()[-800:]}")
        partial = Path(tmp) / "template.db"
        # The backup API folds the write-ahead log in: one self-contained file.
        with sqlite3.connect(Path(tmp) / "prefect.db") as src, sqlite3.connect(partial) as dst:
            src.backup(dst)
        os.replace(partial, template)  # atomic: a concurrent preparer never sees half a file
    return template


def seed_database(prefect_home_dir: Path) -> bool:
    """Give a new PREFECT_HOME a copy of the template database, when there is one; True if copied."""
    db, template = prefect_home_dir / "prefect.db", database_template()
    if db.exists() or os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or not template.is_file():
        return False
    prefect_home_dir.mkdir(parents=True, exist_ok=True)
    partial = prefect_home_dir / "prefect.db.partial"
    shutil.copyfile(template, partial)
    os.replace(partial, db)
    return True


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
    """Start the local server (or find it running) and wait until it answers."""
    return _wait(begin(quiet), timeout)


def begin(quiet: bool = False) -> dict:
    """Start the local server if none runs, without waiting for it to answer.

    A first start spends 4-10 s in Prefect's migrations and app start-up; a command that begins it
    before its own heavy imports (Prefect, torch: about as long) pays only the longer of the two.
    """
    current = status()
    if current:  # healthy, or started by another command and still coming up
        return current
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    ph = prefect_home()
    ph.mkdir(parents=True, exist_ok=True)
    seed_database(ph)
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
    return state


def _wait(state: dict, timeout: float) -> dict:
    if state.get("healthy"):
        return state
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


def begin_api() -> None:
    """Set this process up for the local server and let it come up in the background (see `begin`).

    Call it before importing Prefect: Prefect then reads the right API URL at import, and `ensure_api`
    only waits for whatever start-up is left.
    """
    if os.environ.get("PREFECT_API_URL"):
        return
    state = begin()
    _pending.append(state)
    os.environ["PREFECT_API_URL"] = state["url"]
    os.environ.setdefault("PREFECT_HOME", str(prefect_home()))


def ensure_api() -> str:
    """PREFECT_API_URL if set, else the local background server (started if needed), once it answers."""
    if _pending:
        _wait(_pending.pop(), 180.0)
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
# A server begun by begin_api that ensure_api still has to wait for.
_pending: list[dict] = []
