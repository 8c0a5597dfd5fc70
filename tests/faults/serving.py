"""`trainkite serve` as a user runs it (uvicorn + the SageMaker container's app), on a free 127.0.0.1 port."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.faults.prefect_server import free_port

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS in /proc")


@contextlib.contextmanager
def serve_model(root: Path, model_id: str, log: Path, timeout: float = 90) -> Iterator[Served]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", model_id, "--port", str(port), "--root", str(root)],
            cwd=REPO,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    served = Served(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{served.url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`trainkite serve` never became healthy:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
