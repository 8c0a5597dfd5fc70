"""The Buildkite build a training run belongs to (passed as a flow parameter, or read from the env)."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from trainkite.ids import build_model_id


class BuildContext(BaseModel):
    """Identity of the Buildkite build that started this run; empty outside Buildkite."""

    number: int = Field(..., description="BUILDKITE_BUILD_NUMBER")
    pipeline: str = Field(..., description="BUILDKITE_PIPELINE_SLUG")
    organization: str = Field(..., description="BUILDKITE_ORGANIZATION_SLUG")
    commit: str | None = Field(None, description="BUILDKITE_COMMIT")
    branch: str | None = Field(None, description="BUILDKITE_BRANCH")
    url: str | None = Field(None, description="BUILDKITE_BUILD_URL")
    source: str | None = Field(None, description="BUILDKITE_SOURCE (webhook, api, ui, schedule, ...)")
    step_key: str = Field("training_finished", description="Key of the block step the run unblocks.")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BuildContext | None:
        env = dict(os.environ) if env is None else env
        if not env.get("BUILDKITE_BUILD_NUMBER") or not env.get("BUILDKITE_PIPELINE_SLUG"):
            return None
        return cls(
            number=int(env["BUILDKITE_BUILD_NUMBER"]),
            pipeline=env["BUILDKITE_PIPELINE_SLUG"],
            organization=env.get("BUILDKITE_ORGANIZATION_SLUG", ""),
            commit=env.get("BUILDKITE_COMMIT"),
            branch=env.get("BUILDKITE_BRANCH"),
            url=env.get("BUILDKITE_BUILD_URL"),
            source=env.get("BUILDKITE_SOURCE"),
            step_key=env.get("TRAINKITE_UNBLOCK_STEP_KEY", "training_finished"),
        )

    @property
    def model_id(self) -> str:
        return build_model_id(self.pipeline, self.number)
