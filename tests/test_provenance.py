"""A build's run trains the build's commit or nothing: the check, the commit an image reports, and launch's
resolution of a symbolic BUILDKITE_COMMIT."""

from __future__ import annotations

import pytest

from cli import launch as ln
from buildkite.context import BuildContext
from tasks.provenance import check_code_commit
from tests.process_helpers import GIT, git_checkout
from trainkite import lineage
from trainkite.errors import UserInputError

SHA = "3f1c2a9e8b7d6c5b4a39281706f5e4d3c2b1a098"


def _build(commit: str | None) -> BuildContext:
    return BuildContext(number=7, pipeline="trainkite", organization="acme", commit=commit)


def _git(commit: str, dirty: bool = False) -> dict:
    return {"commit": commit, "dirty": dirty, "branch": "main"}


@pytest.mark.parametrize("build", [None, _build(None), _build("HEAD")])
def test_nothing_to_check_against_returns_the_code_facts(build):
    assert check_code_commit(build, _git("abc")) == _git("abc")


@pytest.mark.parametrize("wanted", [SHA, SHA[:12], SHA.upper()])
def test_the_builds_commit_trains_dirty_or_not(wanted):
    assert check_code_commit(_build(wanted), _git(SHA, dirty=True))["dirty"] is True


def test_another_commit_is_refused_naming_both():
    other = "0" * 40
    with pytest.raises(UserInputError) as err:
        check_code_commit(_build(other), _git(SHA))
    msg = str(err.value)
    assert "build #7" in msg and other in msg and SHA in msg and "TRAINKITE_TRAIN_IMAGE" in msg


def test_code_that_does_not_know_its_commit_is_refused_inside_a_build():
    with pytest.raises(UserInputError, match="GIT_COMMIT"):
        check_code_commit(_build(SHA), _git("unknown"))


def test_an_image_reports_its_baked_commit_never_the_builds(monkeypatch):
    monkeypatch.setattr(lineage, "git_output", lambda *a, **k: None)  # no .git, as inside an image
    monkeypatch.setenv("BUILDKITE_COMMIT", SHA)
    monkeypatch.delenv("TRAINKITE_GIT_COMMIT", raising=False)
    assert lineage.git_info()["commit"] == "unknown"
    with pytest.raises(UserInputError):
        check_code_commit(_build(SHA))
    monkeypatch.setenv("TRAINKITE_GIT_COMMIT", SHA)
    assert check_code_commit(_build(SHA))["commit"] == SHA


def test_launch_resolves_a_symbolic_commit_from_the_agents_checkout(tmp_path):
    import subprocess

    checkout = git_checkout(tmp_path / "checkout")
    head = subprocess.run(
        [*GIT, "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert ln.checkout_commit(checkout) == head
    assert ln.checkout_commit(tmp_path) is None  # not a git checkout: keep what the build said
