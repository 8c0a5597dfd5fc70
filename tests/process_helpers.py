"""Small helpers shared by tests that drive subprocesses: a committed git checkout, waiting, finishing."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Identity and signing fixed here, so the commit works on a machine with no git config.
GIT = ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", "-c", "commit.gpgsign=false"]


def git_checkout(path: Path, name: str = "README", text: str = "checkout\n") -> Path:
    """A clean git checkout with one committed file (the launch step refuses a dirty tree)."""
    subprocess.run([*GIT, "init", "-q", str(path)], check=True)
    (path / name).write_text(text)
    subprocess.run([*GIT, "-C", str(path), "add", name], check=True)
    subprocess.run([*GIT, "-C", str(path), "commit", "-q", "-m", "init"], check=True)
    return path


REPO = Path(__file__).resolve().parent.parent


def repo_head() -> str:
    """The commit of the code under test: what a build's BUILDKITE_COMMIT must name for its run to train."""
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def repo_checkout(path: Path) -> Path:
    """A clean clone of this repo at its HEAD: an agent's checkout of the commit the workers run (the repo
    itself may be mid-edit, which the launch step would refuse)."""
    subprocess.run([*GIT, "clone", "-q", "--no-hardlinks", str(REPO), str(path)], check=True)
    return path


def wait_for(
    what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.5, proc: subprocess.Popen | None = None
) -> Any:
    """Poll `predicate` until it is truthy; fail on timeout, or as soon as `proc` (if given) exits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) of a text-mode process; kill it and fail if it hangs."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"hung for {timeout:.0f}s:\n{err[-3000:]}") from None
    return proc.returncode, out, err


def run_artifacts(client, flow_run_id) -> list:
    """The artifacts of one flow run, filtered by the API (an unfiltered read returns one page of the session's)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
