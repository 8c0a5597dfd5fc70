"""Reliability, S3 side: 500 / 503 SlowDown on upload, through a fault-injecting proxy in front of moto's
server (tests/faults/s3_proxy.py). A model is published whole or not at all: no manifest without all its
files, and neither `list_models` nor `trainkite models` ever shows a half-published folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO
from tests.faults.s3_proxy import S3FaultProxy
from tests.fixtures_models import flush_prefect_logs, trained_model_dir  # noqa: F401
from trainkite import manifest as mf
from trainkite.errors import IntegrityError
from trainkite.store import S3Store, StoreError, open_store

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning")

ROOT = "s3://models/team"


@pytest.fixture
def s3(aws, monkeypatch):
    """moto behind the fault proxy; boto3 (and any subprocess given os.environ) talks to the proxy."""
    import boto3

    proxy = S3FaultProxy(aws).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    boto3.session.Session().client("s3").create_bucket(Bucket="models")
    try:
        yield proxy
    finally:
        proxy.stop()


def _model_files(folder) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    return {rel: folder / rel for rel in manifest["files"]}


def _puts(proxy, model_id: str, name: str) -> list:
    return [status for _, _, status in proxy.requests_to("PUT", rf"/sentiment/{model_id}/{name}$")]


def _tk(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_500_and_503_slowdown_on_upload_are_retried_and_the_model_lands_whole(prefect_api, tk_home, params_factory, s3):
    """The whole train flow publishing to S3 while uploads fail: botocore's retries absorb them."""
    from flows.train import train

    mid = "s3-faults-1"
    model = rf"/models/team/sentiment/{mid}/"
    s3.fail(500, "InternalError", method="PUT", path=model + r"weights\.safetensors$")
    s3.fail(503, "SlowDown", method="PUT", path=model + r"metrics\.json$", times=2)
    s3.fail(503, "ServiceUnavailable", method="PUT", path=model + r"manifest\.json$")
    s3.fail(503, "SlowDown", method="PUT", path=rf"/models/team/_scratch/sentiment/{mid}/checkpoints/")  # training

    result = train(params=params_factory(**{"artifacts.root": ROOT}), model_id=mid)
    assert result["artifact_uri"] == f"{ROOT}/sentiment/{mid}"

    assert _puts(s3, mid, r"weights\.safetensors") == [500, 200]
    assert _puts(s3, mid, r"metrics\.json") == [503, 503, 200]
    assert _puts(s3, mid, r"manifest\.json") == [503, 200]
    store = open_store(ROOT)
    folder, manifest = mf.fetch_model(store, mid)  # downloads and verifies every sha256
    assert set(manifest["files"]) >= {"weights.safetensors", "metrics.json", "params.json", "features.json"}
    assert [m["model_id"] for m in mf.list_models(store)] == [mid]


def _fast_budget_store() -> S3Store:
    """The production client (standard retries, max_attempts 8) with max_attempts 3, so exceeding the budget
    takes a second instead of ~45 s of botocore backoff. Same code path, smaller number."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client("s3", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    return S3Store(ROOT, client=client)


def test_faults_beyond_the_retry_budget_fail_cleanly_and_a_rerun_publishes(s3, trained_model_dir, tk_home):  # noqa: F811
    files = _model_files(trained_model_dir)
    ref = mf.ModelRef("sentiment", "budget-1")
    store = _fast_budget_store()
    s3.fail(503, "SlowDown", method="PUT", path=r"/sentiment/budget-1/params\.json$", times=None)

    with pytest.raises(StoreError) as err:
        mf.publish(store, ref, files, {"lineage": {}})
    assert "sentiment/budget-1/params.json" in str(err.value) and "SlowDown" in str(err.value)
    # botocore's retries `max_attempts` counts retries: the first try + 3 retries, all refused.
    assert _puts(s3, "budget-1", r"params\.json") == [503] * 4
    # Not a model: no manifest, not listed, refused by name when asked for.
    assert not store.exists("sentiment/budget-1/manifest.json")
    assert _puts(s3, "budget-1", r"manifest\.json") == []
    assert mf.list_models(store) == []
    with pytest.raises(IntegrityError, match="has no manifest.json: it is not a model"):
        mf.fetch_model(store, "budget-1")
    listed = _tk("models", "--root", ROOT, "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)["models"] == [], listed.stderr
    refused = _tk("predict", "budget-1", "--root", ROOT, "--text", "hello")
    assert refused.returncode == 1 and "has no manifest.json" in refused.stderr
    assert "Traceback" not in refused.stderr

    s3.clear()  # S3 recovers; the same run publishes again
    manifest = mf.publish(store, ref, files, {"lineage": {}})
    assert store.exists("sentiment/budget-1/manifest.json")
    assert mf.fetch_model(store, "budget-1")[1]["files"] == manifest["files"]
    assert [m["model_id"] for m in mf.list_models(store)] == ["budget-1"]


def test_a_model_being_published_is_invisible_until_its_manifest_lands(s3, trained_model_dir, tk_home):  # noqa: F811
    files = _model_files(trained_model_dir)
    store = open_store(ROOT)
    s3.delay(3.0, method="PUT", path=r"/sentiment/inflight-1/manifest\.json$")
    done: dict = {}
    worker = threading.Thread(
        target=lambda: done.setdefault(
            "m", mf.publish(store, mf.ModelRef("sentiment", "inflight-1"), files, {"lineage": {}})
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while sum(1 for r in s3.requests_to("PUT", r"/sentiment/inflight-1/") if r[2] == 200) < len(files):
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.02)
    # Every file is in S3 now and the manifest PUT is held by the proxy: not a model yet.
    assert len(store.list("sentiment/inflight-1")) == len(files)
    assert mf.list_models(store) == []
    with pytest.raises(IntegrityError, match="no manifest.json"):
        mf.find_model(store, "inflight-1")
    worker.join(30)
    assert "m" in done
    assert [m["model_id"] for m in mf.list_models(store)] == ["inflight-1"]
