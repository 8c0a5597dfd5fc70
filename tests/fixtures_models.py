"""A real trained model for serving and deploy tests, trained once per session by the train flow.

`model_factory` publishes copies of it under other model IDs (and creation times) into the test's own
store: the same real weights, a distinct model as far as the manifest, the guards and the log are
concerned. Import the fixtures in a test module: `from tests.fixtures_models import ...  # noqa: F401`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from trainkite.manifest import MANIFEST

MODEL_NAME = "sentiment"


@pytest.fixture(scope="session")
def trained_model_dir(prefect_api, tmp_path_factory) -> Path:
    """A published model folder (`<root>/sentiment/base-1/`) from a real, small run of the train flow."""
    from flows.train import train
    from tests.conftest import small_params

    root = tmp_path_factory.mktemp("trained-model") / "store"
    train(params=small_params(**{"artifacts.root": str(root)}), model_id="base-1")
    return root / MODEL_NAME / "base-1"


def copy_model(source: Path, root: Path, model_id: str, created_at: str | None = None) -> Path:
    """Publish `source`'s verified files as `model_id` under the store folder `root`."""
    manifest = json.loads((source / MANIFEST).read_text())
    dest = root / MODEL_NAME / model_id
    dest.mkdir(parents=True)
    for rel in manifest["files"]:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest / rel)
    manifest["model_id"] = model_id
    manifest["lineage"]["model_id"] = model_id
    if created_at:
        manifest["created_at"] = created_at
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return dest


@pytest.fixture()
def model_factory(trained_model_dir, tk_home):
    """`make(model_id, created_at=None)` -> the model's folder in this test's default store."""
    from trainkite.home import default_artifact_root

    def make(model_id: str, created_at: str | None = None) -> Path:
        return copy_model(trained_model_dir, Path(default_artifact_root()), model_id, created_at)

    return make


@pytest.fixture(scope="session", autouse=True)
def flush_prefect_logs():
    """Send queued flow-run logs while the session's Prefect server still runs.

    The server stops in pytest_unconfigure; logs of a flow that ended in the last second or two are then
    retried against a dead API at interpreter exit, which holds the test process for over a minute.
    """
    yield
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
