"""Which code a run trains with, checked against the build that asked for it.

A model ID leads back to its build, and the build to a commit. That only holds if the code that
trains is the build's commit: a process worker's checkout or an ECS image can lag behind. So a run
started by a build refuses to train on any other commit, before it fetches a row or takes a GPU.
A dirty worker tree is allowed (a developer's own worker) and recorded in the manifest (`git.dirty`).
"""

from __future__ import annotations

import logging
import re

from buildkite.context import BuildContext
from trainkite.errors import UserInputError
from trainkite.lineage import git_info

log = logging.getLogger("trainkite.provenance")

_SHA = re.compile(r"^[0-9a-f]{7,40}$")


def check_code_commit(build: BuildContext | None, git: dict | None = None) -> dict:
    """The code's git facts; raises when a build asked for another commit than the one this code is."""
    git = git_info() if git is None else git
    if build is None or not build.commit:
        return git
    wanted = build.commit.lower()
    if not _SHA.match(wanted):
        # `trainkite launch` resolves a symbolic BUILDKITE_COMMIT ("HEAD") from the agent's checkout; a
        # `trainkite train` run straight in a build step trains that checkout itself.
        log.warning(
            "build #%s names commit %r, not a SHA: cannot check the code against it", build.number, build.commit
        )
        return git
    have = str(git.get("commit") or "unknown")
    if have == "unknown":
        raise UserInputError(
            f"build #{build.number} asks for commit {build.commit}, but this code does not know its commit (no "
            ".git, no TRAINKITE_GIT_COMMIT): build the image with --build-arg GIT_COMMIT=$BUILDKITE_COMMIT"
        )
    if not have.lower().startswith(wanted):
        raise UserInputError(
            f"build #{build.number} asks for commit {build.commit}, but this worker's code is commit {have}: the "
            "model would not come from the build's commit. Run the build's image (TRAINKITE_TRAIN_IMAGE at "
            "launch) or update the worker's checkout"
        )
    return git
