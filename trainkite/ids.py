"""Model IDs: `<pipeline-slug>-<build-number>` inside a Buildkite build, else a local ID that cannot collide."""

from __future__ import annotations

import os
import re
import secrets
from datetime import UTC, datetime

from trainkite.errors import UserInputError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_model_id(model_id: str) -> str:
    """Refuse anything that could leave the store (`../x`, `a/b`) or is not a plain name."""
    if not isinstance(model_id, str) or not _ID_RE.match(model_id) or ".." in model_id:
        raise UserInputError(
            f"invalid model ID {model_id!r}: use letters, digits, '.', '_' and '-' only "
            "(e.g. trainkite-42 or local-20261127T101500Z-3f9a1c); see `trainkite models`"
        )
    return model_id


def build_model_id(pipeline_slug: str, build_number: int | str) -> str:
    """The one place the Buildkite model-ID format is written: `<pipeline-slug>-<build-number>`."""
    return f"{pipeline_slug}-{build_number}"


def new_model_id(env: dict[str, str] | None = None) -> str:
    env = dict(os.environ) if env is None else env
    number = env.get("BUILDKITE_BUILD_NUMBER")
    slug = env.get("BUILDKITE_PIPELINE_SLUG")
    if number and slug:
        return validate_model_id(build_model_id(slug, number))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"local-{stamp}-{secrets.token_hex(3)}"


def resolve_model_id(model_id: str | None, build=None) -> str:
    """The ID a run publishes under: the one asked for (validated), else its Buildkite build's, else a new one.

    `build` is a `buildkite.context.BuildContext` (anything with `.model_id`), or None outside a build.
    """
    if model_id:
        return validate_model_id(model_id)
    return build.model_id if build else new_model_id()
