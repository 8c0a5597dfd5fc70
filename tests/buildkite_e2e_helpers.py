"""Helpers for running buildkite/pipeline.yml in tests: a step runner over the fake Buildkite, a handle
on a `prefect worker` subprocess, and Prefect API reads. Fixtures live in tests/fixtures_buildkite_e2e.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from buildkite.client import BuildkiteClient
from tests.fakes.buildkite_fixtures import AGENT_BIN, ORG, PIPELINE, TOKEN
from tests.fakes.buildkite_server import FakeBuildkite
from tests.process_helpers import wait_for

REPO = Path(__file__).resolve().parent.parent
PIPELINE_YML = REPO / "buildkite" / "pipeline.yml"
AGENT_TOKEN = "bk-agent-job-token"
APPROVER_TOKEN = "bk-approver-token"
APPROVER = "alice-approver"
# Small and fast; tracking off (the flow's W&B path has its own tests).
# As tests/conftest.py's small_params: batch 16 at rate 4 learns the demo in three epochs.
SMALL = [
    "train.epochs=3",
    "train.batch_size=16",
    "train.learning_rate=4.0",
    "preprocess.buckets=4096",
    "model.embedding_dim=16",
    'tracking.backend="none"',
]


def pipeline_steps() -> list[dict[str, Any]]:
    return yaml.safe_load(PIPELINE_YML.read_text())["steps"]


def fake_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pipeline.yml's steps as FakeBuildkite jobs (block steps become manual jobs with their teams)."""
    out = []
    for step in steps:
        manual = "block" in step
        out.append(
            {
                "key": step["key"],
                "type": "manual" if manual else "script",
                "label": step.get("block") or step.get("label"),
                "allowed_teams": step.get("allowed_teams", []),
            }
        )
    return out


@dataclass
class StepResult:
    key: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


@dataclass
class PipelineRun:
    """One build of pipeline.yml, its steps run here in order, the way an agent would run them."""

    fake: FakeBuildkite
    number: int
    home: Path
    checkout: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    results: dict[str, StepResult] = field(default_factory=dict)

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return {s["key"]: s for s in pipeline_steps()}

    def env(self, step_key: str) -> dict[str, str]:
        step = self.steps[step_key]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKITE")}
        env.update(
            {
                "PATH": os.pathsep.join([str(AGENT_BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                "BUILDKITE": "true",
                "CI": "true",
                "BUILDKITE_AGENT_FAKE_API": self.fake.url,
                "BUILDKITE_AGENT_FAKE_TOKEN": AGENT_TOKEN,
                "BUILDKITE_ORGANIZATION_SLUG": ORG,
                "BUILDKITE_PIPELINE_SLUG": PIPELINE,
                "BUILDKITE_BUILD_NUMBER": str(self.number),
                "BUILDKITE_BUILD_ID": self.build["id"],
                "BUILDKITE_BUILD_URL": self.build["web_url"],
                "BUILDKITE_COMMIT": "HEAD",
                "BUILDKITE_BRANCH": "main",
                "BUILDKITE_SOURCE": "ui",
                "BUILDKITE_STEP_KEY": step_key,
                "BUILDKITE_LABEL": step.get("label", ""),
                "BUILDKITE_BUILD_CHECKOUT_PATH": str(self.checkout),
                # The launch step annotates through the REST API with the bot's token (agent env hook).
                "BUILDKITE_API_URL": self.fake.url,
                "BUILDKITE_API_TOKEN": TOKEN,
                "TRAINKITE_HOME": str(self.home),
                "TRAINKITE_DEPLOY_TARGET": "local",
            }
        )
        env.update(self.extra_env)
        return env

    @property
    def build(self) -> dict[str, Any]:
        return self.fake.build(ORG, PIPELINE, self.number)

    def run_step(self, key: str, timeout: float = 180) -> StepResult:
        step = self.steps[key]
        out = subprocess.run(
            ["bash", "-c", step["command"]],
            cwd=REPO,
            env=self.env(key),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = StepResult(key, out.returncode, out.stdout, out.stderr)
        self.results[key] = result
        return result

    def job(self, key: str) -> dict[str, Any]:
        return self.fake.job(ORG, PIPELINE, self.number, key)

    def annotations(self) -> dict[str, dict[str, Any]]:
        return {a["context"]: a for a in self.fake.annotations(ORG, PIPELINE, self.number)}

    def wait_unblocked(self, key: str, timeout: float) -> dict[str, str]:
        wait_for(
            f"{key} of build #{self.number} to be unblocked", lambda: self.job(key)["state"] == "unblocked", timeout
        )
        return self.build["meta_data"]

    def approve(self, key: str) -> None:
        """A member of the block's allowed team presses it."""
        self.fake.set_job_state(ORG, PIPELINE, self.number, key, "blocked")
        BuildkiteClient(APPROVER_TOKEN, self.fake.url, ORG, PIPELINE).unblock(self.number, key, {})
        self.extra_env["BUILDKITE_UNBLOCKER"] = APPROVER


class Worker:
    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log = proc, log

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def flow_run_process(self, flow_run_id: str) -> int | None:
        """PID of the worker's subprocess running this flow run (found by its PREFECT__FLOW_RUN_ID)."""
        needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
        for pid in _descendants(self.proc.pid):
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return pid
            except OSError:
                continue
        return None

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # Field 4 is the parent PID; the command name (field 2) may hold spaces, so split after ')'.
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def read_flow_run(flow_run_id: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def release_runs_for(flow_run_id: str) -> list:
    """release-build flow runs started for `flow_run_id` (by the automation)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["release-build"])))
    return [r for r in runs if r.parameters.get("flow_run_id") == str(flow_run_id)]
