"""A private `prefect server` (own PREFECT_HOME and SQLite database, own port) that a test may stop and
start again on the same port and database, to see what a run does while its API goes away."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePrefectServer:
    def __init__(self, home: Path, port: int | None = None):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = self.home / "server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        """The environment a client of this server (a `trainkite train` subprocess) runs with."""
        return {"PREFECT_API_URL": self.url, "PREFECT_HOME": str(self.home)}

    def start(self, timeout: float = 120, wait: bool = True) -> PrivatePrefectServer:
        """Start the server; with wait=False return at once (it boots while the caller does other work)."""
        env = {
            **os.environ,
            **self.env(),
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        env.pop("PREFECT_API_URL")  # the server itself serves; it is no client
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.starts += 1
        if wait:
            self.wait_healthy(timeout)
        return self

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"private prefect server exited:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.25)
        raise RuntimeError(f"private prefect server not healthy after {timeout:.0f}s:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Stop the server's whole process group (uvicorn and its services), SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # Wait until the port is really free, so the restart can bind it again.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.healthy():
            time.sleep(0.1)

    def restart(self, down_for: float = 0.0, timeout: float = 120) -> float:
        """Stop, stay down `down_for` seconds, start again on the same port and database; seconds offline."""
        t0 = time.monotonic()
        self.stop()
        time.sleep(down_for)
        self.start(timeout)
        return time.monotonic() - t0
