"""One local Prefect server per TRAINKITE_HOME, started on first use and reused.

Prefect's ephemeral mode starts a server in every process (15-30 s here); a background
`prefect server start` is paid for once. `PREFECT_API_URL`, when set, always wins.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from trainkite.errors import TrainkiteError, UserInputError
from trainkite.home import home

# How long a starter waits for another to finish starting the server (the lock is held only for the check
# and the spawn, not the start-up itself: well under a second).
START_LOCK_TIMEOUT_S = 60.0


def _state_file() -> Path:
    return home() / "prefect" / "server.json"


def prefect_home() -> Path:
    return home() / "prefect"


def database_template() -> Path:
    """Where the empty, migrated Prefect database for this Prefect version is kept (one per machine)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "trainkite" / f"prefect-{importlib.metadata.version('prefect')}.db"


# The schema of an empty database as Prefect's migrations leave it, for the pinned Prefect (`requirements.lock`):
# executing it takes 0.2 s where the migrations take 15-20 s of a fresh install. Its first line names the Prefect
# version it was dumped from; any other version migrates as before. `tests/test_prefect_server.py` checks it
# against a real migration (regenerate with `python -m cli.prefect_server --write-schema`).
SCHEMA_SNAPSHOT = Path(__file__).with_name("prefect_schema.sql")


def _snapshot_sql() -> str | None:
    """The shipped schema, when it was dumped from the installed Prefect."""
    try:
        text = SCHEMA_SNAPSHOT.read_text()
    except OSError:
        return None
    first = text.split("\n", 1)[0]
    return text if first == f"-- prefect {importlib.metadata.version('prefect')}" else None


def migrate_empty_database(folder: Path) -> Path:
    """`folder/prefect.db`, migrated by Prefect itself (its `server database upgrade`)."""
    env = {**os.environ, "PREFECT_HOME": str(folder), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if done.returncode != 0:
        raise TrainkiteError(f"preparing the Prefect database failed: {done.stderr.strip()[-800:]}")
    return folder / "prefect.db"


def schema_dump(db: Path) -> str:
    """The database as SQL (schema and rows), with the Prefect version it belongs to on the first line."""
    with sqlite3.connect(db) as conn:
        body = "\n".join(conn.iterdump())
    return f"-- prefect {importlib.metadata.version('prefect')}\n{body}\n"


def prepare_database() -> Path:
    """An empty database as Prefect's migrations leave it, kept as a template (one per Prefect version).

    Migrating a new SQLite database is most of a first server start; every new TRAINKITE_HOME (and test session)
    then starts from a copy. Built from the shipped schema snapshot when it matches the installed Prefect, else by
    Prefect's own migrations. The install script calls this.
    """
    template = database_template()
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=template.parent) as tmp:
        sql = _snapshot_sql()
        if sql is None:
            db = migrate_empty_database(Path(tmp))
        else:
            db = Path(tmp) / "prefect.db"
            with sqlite3.connect(db) as conn:
                conn.executescript(sql)
        partial = Path(tmp) / "template.db"
        # The backup API folds the write-ahead log in: one self-contained file.
        with sqlite3.connect(db) as src, sqlite3.connect(partial) as dst:
            src.backup(dst)
        os.replace(partial, template)  # atomic: a concurrent preparer never sees half a file
    return template


def seed_database(prefect_home_dir: Path) -> bool:
    """Give a new PREFECT_HOME a copy of the template database, when there is one; True if copied."""
    db, template = prefect_home_dir / "prefect.db", database_template()
    if db.exists() or os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or not template.is_file():
        return False
    prefect_home_dir.mkdir(parents=True, exist_ok=True)
    # A name of its own: two seeders sharing one temp name moved each other's file away (FileNotFoundError).
    fd, partial = tempfile.mkstemp(dir=prefect_home_dir, prefix="prefect.db.", suffix=".partial")
    os.close(fd)
    try:
        shutil.copyfile(template, partial)
        if db.exists():  # another seeder got there first: theirs stays
            return False
        os.replace(partial, db)
    finally:
        Path(partial).unlink(missing_ok=True)
    return True


def _answering_home(url: str, timeout: float = 2.0) -> str | None:
    """The PREFECT_HOME of the server that answers at `url` ("" when it does not say), or None when none does."""
    try:
        if requests.get(f"{url}/health", timeout=timeout).status_code != 200:
            return None
        return str(requests.get(f"{url}/admin/settings", timeout=timeout).json().get("home") or "")
    except (requests.RequestException, ValueError, AttributeError):
        return None


def _healthy(url: str, timeout: float = 2.0) -> bool:
    """This home's server answers at `url`. Another TRAINKITE_HOME's server can hold the same port (it bound
    the port between our check that it was free and our server's start): that one is not ours to use, reap or
    stop."""
    served = _answering_home(url, timeout)
    return served is not None and (served == "" or Path(served).resolve() == prefect_home().resolve())


def _alive(pid: int) -> bool:
    """The process runs (an exited one its parent has not reaped yet, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _free_port(preferred: int = 4200) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise TrainkiteError("no free port for the Prefect server")


@contextlib.contextmanager
def _start_lock(timeout: float = START_LOCK_TIMEOUT_S):
    """One starter at a time per TRAINKITE_HOME: the check "is one running?" and the spawn are one step, so
    concurrent first commands start one server (four at once used to start up to four on one database)."""
    ph = prefect_home()
    ph.mkdir(parents=True, exist_ok=True)
    with open(ph / "start.lock", "a+") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrainkiteError(
                        f"another trainkite command has been starting the local Prefect server "
                        f"for over {timeout:.0f}s (lock {ph / 'start.lock'})"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def status() -> dict | None:
    f = _state_file()
    if not f.is_file():
        return None
    try:
        state = json.loads(f.read_text())
        pid = int(state["pid"])
    except (ValueError, KeyError, TypeError):
        return None  # a damaged state file: treated as no server (the next start rewrites it)
    if not _alive(pid):
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
    with _start_lock():
        current = status()  # whoever held the lock before us may have started it
        if current:
            return current
        return _spawn(quiet)


def _spawn(quiet: bool, preferred: int = 4200) -> dict:
    port = _free_port(preferred)
    url = f"http://127.0.0.1:{port}/api"
    ph = prefect_home()
    ph.mkdir(parents=True, exist_ok=True)
    seed_database(ph)
    env = {
        **os.environ,
        "PREFECT_HOME": str(ph),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_API_URL": url,
    }
    with open(ph / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = {"pid": proc.pid, "url": url, "port": port, "log": str(ph / "server.log")}
    partial = _state_file().with_name(f"server.json.{os.getpid()}.partial")
    partial.write_text(json.dumps(state))
    os.replace(partial, _state_file())  # a reader never sees half a state file
    if not quiet:
        print(
            f"Starting a local Prefect server at {url[:-4]} (once; stop it with `trainkite server stop`)",
            file=sys.stderr,
        )
    return state


def _wait(state: dict, timeout: float) -> dict:
    if state.get("healthy"):
        return state
    deadline = time.monotonic() + timeout
    moved = False
    while time.monotonic() < deadline:
        if not moved and not _alive(state["pid"]) and _answering_home(state["url"]) is not None:
            # Our server could not bind: another home's took the port first. Start again on a port of the OS's.
            moved = True
            with _start_lock():
                state = _spawn(quiet=True, preferred=0)
            continue
        if _healthy(state["url"]):
            # A server that has just come up: the runs its previous life left Running, whose processes are gone
            # (killed with it, or after their client gave up on it), are recorded Crashed now, not only at the
            # next `server status`.
            with contextlib.suppress(Exception):
                reap_orphans(state["url"])
            return {**state, "healthy": True}
        if not _alive(state["pid"]):
            raise TrainkiteError(f"the local Prefect server exited; see {state.get('log')}")
        time.sleep(0.5)
    raise TrainkiteError(f"the local Prefect server did not answer within {timeout:.0f}s; see {state.get('log')}")


ACTIVE_STATES = ("PENDING", "RUNNING", "CANCELLING", "PAUSED")
# A tag `trainkite-pid:<pid>:<start ticks>@<host>` on a flow run says which local process runs it (see
# run_tag), so a run whose process is gone can be told from one still training.
PID_TAG = "trainkite-pid:"


def _proc_started(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def run_tag(pid: int | None = None) -> str:
    """The tag a local command puts on the flow runs it executes in-process."""
    pid = pid or os.getpid()
    return f"{PID_TAG}{pid}:{_proc_started(pid)}@{socket.gethostname()}"


def _tag_with_process(flow, flow_run, state) -> None:
    """on_running hook: put this process's tag on the flow run (see `run_tag`)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, tags=sorted({*(flow_run.tags or []), run_tag()}))


@contextlib.contextmanager
def local_flow_run(flow):
    """Around a flow that a CLI command runs in-process; yields the flow to call.

    - The flow run is tagged with this process (a later `server stop`/`status` marks it Crashed if the process
      is killed before it reports an end). The tag goes on the flow run only, through an on_running hook: a tag
      in Prefect's `tags()` context lands on every task run too, and each tagged task run asks the API for
      that tag's concurrency slots first (an extra write that waited 2 s on the SQLite server in half of the
      demo runs measured).
    - No flow-run heartbeats unless something watches them: Prefect's heartbeat thread sleeps in 1 s steps and
      is joined at the flow's end (up to a second of every command). Only the stale-run automation reads
      heartbeats, and only for runs of a Buildkite build; a laptop's run is reaped through its tag. Inside a
      Buildkite job, or when PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set, Prefect's own setting stands.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    watched = os.environ.get("BUILDKITE") == "true" or "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ
    beats = contextlib.nullcontext() if watched else temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
    with beats:
        yield flow.with_options(on_running=[*flow.on_running_hooks, _tag_with_process])


def _tagged_process(tag: str) -> tuple[int, bool] | None:
    """(pid, still running) for a pid tag naming a process on this host; None for another host's or an odd tag."""
    try:
        pid_part, host = tag[len(PID_TAG) :].rsplit("@", 1)
        pid_s, started = pid_part.split(":", 1)
        pid = int(pid_s)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None  # another machine's process: not ours to judge
    return pid, _alive(pid) and (started == "" or _proc_started(pid) in ("", started))


def _process_gone(tag: str) -> bool:
    """True when the tag names a process on this host that no longer runs (pid dead, or reused)."""
    proc = _tagged_process(tag)
    return proc is not None and not proc[1]


# How long `server stop --force` gives interrupted runs to report their own end before it marks them Crashed.
INTERRUPT_WAIT_S = 30.0


def interrupt_local_runs(runs: list[dict], wait_s: float = INTERRUPT_WAIT_S) -> list[int]:
    """Interrupt (SIGINT, as Ctrl-C does) the live local processes of `runs` and wait for them to exit; the
    pids signalled. Each then ends its own run while the API still answers: Crashed, its scratch and last
    checkpoint kept, its resume command printed, instead of retrying a gone API for minutes."""
    pids = []
    for run in runs:
        for tag in run["tags"]:
            proc = _tagged_process(tag) if tag.startswith(PID_TAG) else None
            if proc and proc[1] and proc[0] != os.getpid():
                try:
                    os.kill(proc[0], signal.SIGINT)
                    pids.append(proc[0])
                except OSError:
                    pass
    deadline = time.monotonic() + wait_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def _api(url: str, method: str, path: str, body: dict | None = None):
    r = requests.request(method, f"{url}{path}", json=body, timeout=10)
    r.raise_for_status()
    return r.json() if r.content else None


def active_runs(url: str) -> list[dict]:
    """Flow runs not in a final state, with {"id", "name", "state", "tags"}."""
    runs = _api(
        url,
        "POST",
        "/flow_runs/filter",
        {"flow_runs": {"state": {"type": {"any_": list(ACTIVE_STATES)}}}, "limit": 200},
    )
    return [
        {"id": r["id"], "name": r["name"], "state": (r.get("state") or {}).get("type"), "tags": r.get("tags") or []}
        for r in runs
    ]


def mark_crashed(url: str, run_id: str, message: str) -> None:
    _api(
        url,
        "POST",
        f"/flow_runs/{run_id}/set_state",
        {"state": {"type": "CRASHED", "name": "Crashed", "message": message}, "force": True},
    )


def reap_orphans(url: str) -> list[dict]:
    """Move flow runs whose local process is gone (SIGKILLed, OOM-killed) to Crashed; the ones reaped.

    Nothing in a killed process can report its end; its tag names the process, so any later command that
    looks (`trainkite server stop`, `server status`) can tell and record it.
    """
    reaped = []
    for run in active_runs(url):
        tag = next((t for t in run["tags"] if t.startswith(PID_TAG)), None)
        if tag and _process_gone(tag):
            mark_crashed(
                url, run["id"], f"its process ({tag[len(PID_TAG) :]}) is gone: killed before it could report an end"
            )
            reaped.append(run)
    return reaped


def stop(force: bool = False) -> bool:
    """Stop the local server; refuse (UserInputError) while flow runs are active, unless `force`, which first
    marks them Crashed so none stays Running for good on a server that is gone."""
    current = status()
    f = _state_file()
    if not current:
        f.unlink(missing_ok=True)
        return False
    if _healthy(current["url"]):
        reap_orphans(current["url"])
        active = active_runs(current["url"])
        if active and not force:
            names = ", ".join(f"{r['name']} ({r['state']})" for r in active[:5])
            raise UserInputError(
                f"{len(active)} flow run(s) are active on the local Prefect server: {names}"
                f"{' ...' if len(active) > 5 else ''}; stopping it would strand them. Wait for "
                "them, cancel them in the UI, or run `trainkite server stop --force`"
            )
        if active and interrupt_local_runs(active):
            active = active_runs(current["url"])  # the interrupted ones reported their own end
        for run in active:
            mark_crashed(
                current["url"],
                run["id"],
                "the local Prefect server was stopped (`trainkite server stop --force`) while this run was active",
            )
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


if __name__ == "__main__":
    # python -m cli.prefect_server --write-schema: refresh the schema snapshot after upgrading Prefect.
    if sys.argv[1:] != ["--write-schema"]:
        raise SystemExit("usage: python -m cli.prefect_server --write-schema")
    with tempfile.TemporaryDirectory() as folder:
        SCHEMA_SNAPSHOT.write_text(schema_dump(migrate_empty_database(Path(folder))))
    print(SCHEMA_SNAPSHOT)
