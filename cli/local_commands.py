"""The `local` deploy target as a background server: started by `trainkite deploy --target local`, stopped by
`trainkite deployments stop`, and asked by `trainkite deployments list` whether it serves what the log says.

One background `trainkite serve` per port; its pid, model and URL are in `$TRAINKITE_HOME/serving/<port>.json`
and its output in `<port>.log` next to it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.main import JsonOpt, emit, err, user_errors
from trainkite.errors import TrainkiteError
from trainkite.home import home

START_TIMEOUT_S = float(os.environ.get("TRAINKITE_LOCAL_START_TIMEOUT_SECONDS", "120"))


def serving_dir() -> Path:
    return home() / "serving"


def _record_path(port: int) -> Path:
    return serving_dir() / f"{port}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def ping(url: str, timeout: float = 2.0) -> str | None:
    """The model ID the server at `url` serves, or None when nothing healthy answers there."""
    import requests

    try:
        r = requests.get(f"{url}/ping", timeout=timeout)
    except requests.RequestException:
        return None
    if r.status_code != 200:
        return None
    try:
        return r.json().get("model_id")
    except ValueError:
        return None


def running() -> list[dict[str, Any]]:
    """Background servers whose process is still there (records of dead ones are removed)."""
    out = []
    for path in sorted(serving_dir().glob("*.json")) if serving_dir().is_dir() else []:
        try:
            rec = json.loads(path.read_text())
        except ValueError:
            continue
        if _alive(rec["pid"]):
            out.append(rec)
        else:
            path.unlink(missing_ok=True)
    return out


def stop_port(port: int, timeout: float = 30) -> dict[str, Any] | None:
    path = _record_path(port)
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    if _alive(rec["pid"]):
        with _suppress_lookup():
            os.killpg(rec["pid"], signal.SIGTERM)  # the server drains in-flight requests and exits 0
        deadline = time.monotonic() + timeout
        while _alive(rec["pid"]) and time.monotonic() < deadline:
            _reap(rec["pid"])
            time.sleep(0.2)
        if _alive(rec["pid"]):
            with _suppress_lookup():
                os.killpg(rec["pid"], signal.SIGKILL)
    path.unlink(missing_ok=True)
    return rec


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is ProcessLookupError


def start(model_id: str, port: int, root: str | None) -> dict[str, Any]:
    """Start `trainkite serve` detached and wait until it answers /ping with this model; else stop it."""
    from cli.serving_commands import check_port_free

    stop_port(port)  # our own server of an older model frees the port first
    check_port_free("127.0.0.1", port)
    serving_dir().mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "cli", "serve", model_id, "--port", str(port)]
    if root:
        cmd += ["--root", root]
    log_path = serving_dir() / f"{port}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    rec = {
        "pid": proc.pid,
        "model_id": model_id,
        "port": port,
        "url": url,
        "log": str(log_path),
        "root": root,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _record_path(port).write_text(json.dumps(rec, indent=2))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ping(url) == model_id:
            return rec
        time.sleep(0.3)
    stop_port(port)
    tail = log_path.read_text(errors="replace")[-1500:] if log_path.is_file() else ""
    raise TrainkiteError(
        f"the local server for {model_id} on port {port} did not become healthy (log {log_path}):\n{tail}"
    )


def stop(
    port: Annotated[int | None, typer.Option("--port", help="Stop only the server on this port.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop the background servers `trainkite deploy --target local` started."""
    with user_errors(as_json):
        ports = [port] if port is not None else [r["port"] for r in running()]
        stopped = [r for p in ports if (r := stop_port(p))]

        def human():
            for r in stopped:
                err.print(f"stopped {r['model_id']} at {r['url']} (pid {r['pid']})", highlight=False)
            if not stopped:
                err.print("no local server running" + (f" on port {port}" if port else ""))

        emit({"stopped": stopped}, as_json, human)


def check(record: dict[str, Any]) -> str:
    """What a live record of the deployment log really is now: for `local`, asked of the server itself."""
    if record.get("target") != "local":
        return "not checked"
    served = ping(record["endpoint"], timeout=1.0)
    if served is None:
        return "not serving"
    return "serving" if served == record["model_id"] else f"serving {served}"


def register(app: typer.Typer) -> None:
    from cli.deployments_commands import deployments_group

    deployments_group(app).command("stop")(stop)
