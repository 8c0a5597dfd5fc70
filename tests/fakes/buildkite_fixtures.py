"""Pytest fixtures for the fake Buildkite API and the fake `buildkite-agent`.

Load with `pytest_plugins = ["tests.fakes.buildkite_fixtures"]` in tests/conftest.py
(or `python -m pytest -p tests.fakes.buildkite_fixtures`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakes.buildkite_server import FakeBuildkite

TOKEN = "bk-test-token"
ORG = "acme"
PIPELINE = "trainkite"
AGENT_BIN = Path(__file__).parent / "bin"


@pytest.fixture
def fake_buildkite() -> Iterator[FakeBuildkite]:
    """A running fake with token `bk-test-token` (read_builds, write_builds) and pipeline acme/trainkite."""
    fake = FakeBuildkite().start()
    fake.add_token(TOKEN, scopes=("read_builds", "write_builds"))
    fake.add_pipeline(ORG, PIPELINE)
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def buildkite_env(fake_buildkite: FakeBuildkite, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Points BuildkiteClient.from_env() at the fake (BUILDKITE_API_URL/_TOKEN/_ORGANIZATION/_PIPELINE)."""
    env = {
        "BUILDKITE_API_URL": fake_buildkite.url,
        "BUILDKITE_API_TOKEN": TOKEN,
        "BUILDKITE_ORGANIZATION_SLUG": ORG,
        "BUILDKITE_PIPELINE_SLUG": PIPELINE,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def buildkite_agent_env(fake_buildkite: FakeBuildkite) -> Callable[..., dict[str, str]]:
    """`buildkite_agent_env(number)` -> an environment for a subprocess "inside" build `number`:
    the fake `buildkite-agent` first on PATH, talking to the fake server."""

    def make(number: int, *, org: str = ORG, pipeline: str = PIPELINE, token: str = TOKEN) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{AGENT_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "BUILDKITE": "true",
            "CI": "true",
            "BUILDKITE_AGENT_FAKE_API": fake_buildkite.url,
            "BUILDKITE_AGENT_FAKE_TOKEN": token,
            "BUILDKITE_ORGANIZATION_SLUG": org,
            "BUILDKITE_PIPELINE_SLUG": pipeline,
            "BUILDKITE_BUILD_NUMBER": str(number),
        }

    return make
