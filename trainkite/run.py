"""A training run's identity, made once by the flow and handed to every step: model name, model ID, store, workdir."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from trainkite.home import runs_dir
from trainkite.manifest import ModelRef
from trainkite.store import ArtifactStore, open_store


@dataclass(frozen=True)
class Run:
    model_name: str
    model_id: str
    artifact_root: str | None = None

    @classmethod
    def of(cls, params: Any, model_id: str) -> Run:
        """The run of `params` (a `params.model.Params`) under `model_id`."""
        return cls(params.model.name, model_id, params.artifacts.root)

    @cached_property
    def store(self) -> ArtifactStore:
        return open_store(self.artifact_root)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.model_name, self.model_id)

    @property
    def prefix(self) -> str:
        """The model's folder in the store."""
        return self.ref.prefix

    @property
    def workdir(self) -> Path:
        # Resolved where the step runs: a process on another host has its own TRAINKITE_HOME.
        return runs_dir() / self.model_id
