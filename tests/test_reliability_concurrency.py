"""Reliability under concurrency: two trainings publishing into one store at the same time (different model
IDs, and the same model ID twice), and the serving app under 200 concurrent requests, some malformed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO
from tests.faults.serving import serve_model
from tests.fixtures_models import copy_model, flush_prefect_logs, trained_model_dir  # noqa: F401
from tests.process_helpers import finish
from trainkite import manifest as mf
from trainkite.store import LocalStore

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning")

SMALL = [
    "--set",
    "preprocess.buckets=4096",
    "--set",
    "model.embedding_dim=16",
    "--set",
    "tracking.backend='none'",
    "--set",
    "train.epochs=3",
]


def _train(home: Path, root: Path, model_id: str, seed: int) -> subprocess.Popen:
    env = {**os.environ, "TRAINKITE_HOME": str(home)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "train",
            *SMALL,
            "--set",
            f"train.seed={seed}",
            "--set",
            f"artifacts.root={json.dumps(str(root))}",
            "--model-id",
            model_id,
            "--json",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _seed_of(store: LocalStore, model_id: str) -> int:
    folder, manifest = mf.fetch_model(store, model_id)  # every file verified against the manifest
    assert json.loads((folder / "params.json").read_text())["train"]["seed"] == manifest["lineage"]["seed"]
    return manifest["lineage"]["seed"]


@pytest.fixture(scope="module")
def four_trainings(prefect_api, tmp_path_factory) -> dict:
    """Four `trainkite train` processes at once, all publishing into one store folder: two with their own
    model IDs (one machine, one TRAINKITE_HOME) and two with the same model ID but other weights (two
    machines: their own TRAINKITE_HOME each). Started together, so the four share the CPU and overlap."""
    base = tmp_path_factory.mktemp("four-trainings")
    root = base / "shared-store"
    procs = {
        "conc-a": _train(base / "home", root, "conc-a", 1),
        "conc-b": _train(base / "home", root, "conc-b", 2),
        "same-1/1": _train(base / "home-1", root, "same-1", 1),
        "same-1/2": _train(base / "home-2", root, "same-1", 2),
    }
    return {"store": LocalStore(root), "results": {name: finish(p, 240) for name, p in procs.items()}}


def test_a_run_whose_scratch_went_with_another_runs_publish_is_told_the_model_id_is_taken(tmp_path):
    """The race above, made certain: two runs of one model ID share its scratch; the first to publish removes
    it, and the other's next read of a staged file says why, with the exit code of a taken ID."""
    from trainkite.errors import ModelIdTaken
    from trainkite.runfiles import local_copy, run_key
    from trainkite.store import StoreError

    store = LocalStore(tmp_path / "store")
    key = run_key("sentiment/race-1", "snapshot.parquet")
    with pytest.raises(StoreError, match="does not exist"):  # not published: the plain error
        local_copy(store, key, tmp_path / "a" / "snapshot.parquet")
    store.put_bytes(b"{}", f"sentiment/race-1/{mf.MANIFEST}")
    with pytest.raises(ModelIdTaken, match="published .* by another run while this one ran") as err:
        local_copy(store, key, tmp_path / "b" / "snapshot.parquet")
    assert err.value.exit_code == 2 and "a model ID is never reused" in str(err.value)


def test_two_trainings_publish_different_models_into_one_store_at_once(four_trainings):
    results, store = four_trainings["results"], four_trainings["store"]
    for mid in ("conc-a", "conc-b"):
        rc, out, err = results[mid]
        assert rc == 0, err[-3000:]
        assert json.loads(out)["model_id"] == mid
    assert sorted(m["model_id"] for m in mf.list_models(store)) == ["conc-a", "conc-b", "same-1"]
    assert (_seed_of(store, "conc-a"), _seed_of(store, "conc-b")) == (1, 2)


def test_the_same_model_id_twice_at_once_one_wins_the_other_is_refused_cleanly(four_trainings):
    """Two runs, one model ID, different weights (seeds): never a mixed folder. The loser is refused with a
    message (exit 2: the model ID is taken; no traceback), or, had its files been identical, would have been
    idempotent."""
    results, store = four_trainings["results"], four_trainings["store"]
    same = [results["same-1/1"], results["same-1/2"]]
    assert sorted(rc for rc, _, _ in same) == [0, 2], [r[2][-2000:] for r in same]
    loser = next(err for rc, _, err in same if rc == 2)
    assert "Traceback" not in loser
    assert "a model ID is never reused" in loser, loser[-2000:]
    winner = next(json.loads(out) for rc, out, _ in same if rc == 0)
    seed = _seed_of(store, "same-1")  # whole and verified: every file from the winner
    assert winner["metrics"] == mf.read_manifest(store, mf.find_model(store, "same-1"))["metrics"]
    assert seed in (1, 2)


def _files(folder: Path) -> dict[str, Path]:
    return {rel: folder / rel for rel in json.loads((folder / "manifest.json").read_text())["files"]}


def test_same_model_id_publishes_racing_in_threads_never_mix_files(trained_model_dir, tmp_path):  # noqa: F811
    """The publish race itself, forced: both publishers upload slowly, interleaving file by file. Before the
    claim in trainkite.manifest.publish, both "succeeded" and left a folder whose manifest matched neither."""
    other = copy_model(trained_model_dir, tmp_path / "other", "x")
    (other / "params.json").write_text((other / "params.json").read_text() + "\n")  # different bytes
    variants = {"a": trained_model_dir, "b": other}
    barrier = threading.Barrier(2)

    class SlowStore(LocalStore):
        def put_bytes_if_absent(self, data, key):
            barrier.wait(10)  # both reach the claim together
            return super().put_bytes_if_absent(data, key)

        def put_file(self, local, key):
            time.sleep(0.02)
            super().put_file(local, key)

    outcomes: dict[str, str] = {}

    def publish(tag: str) -> None:
        try:
            mf.publish(
                SlowStore(tmp_path / "store"),
                mf.ModelRef("sentiment", "race-1"),
                _files(variants[tag]),
                {"lineage": {}},
            )
            outcomes[tag] = "published"
        except Exception as err:  # the loser's refusal
            outcomes[tag] = f"{type(err).__name__}: {err}"

    threads = [threading.Thread(target=publish, args=(t,)) for t in variants]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.split(":")[0] for o in outcomes.values()) == ["ModelIdTaken", "published"], outcomes
    assert "being published to" in next(o for o in outcomes.values() if o != "published")
    store = LocalStore(tmp_path / "store")
    mf.fetch_model(store, "race-1")  # verifies: the folder is one publisher's, whole
    # Publishing identical files again (a retry) is idempotent, not refused.
    winner = next(t for t, o in outcomes.items() if o == "published")
    again = mf.publish(store, mf.ModelRef("sentiment", "race-1"), _files(variants[winner]), {"lineage": {}})
    assert again["files"] == mf.read_manifest(store, mf.ModelRef("sentiment", "race-1"))["files"]


# --- serving under load ----------------------------------------------------------------------------------


@pytest.fixture
def served(trained_model_dir, tmp_path):  # noqa: F811
    """`trainkite serve` (uvicorn, the SageMaker container's app), the model from a store."""
    copy_model(trained_model_dir, tmp_path / "store", "serve-1")
    with serve_model(tmp_path / "store", "serve-1", tmp_path / "serve.log") as s:
        yield s


SIX_MIB = 6 * 1024 * 1024
MALFORMED = [
    ("bad json", b"{not json", "application/json", 400),
    ("wrong type", json.dumps({"instances": [1, 2]}).encode(), "application/json", 400),
    ("not an array", json.dumps({"instances": "text"}).encode(), "application/json", 400),
    ("empty list", json.dumps({"instances": []}).encode(), "application/json", 400),
    ("deeply nested", b"[" * 50_000 + b"]" * 50_000, "application/json", 400),
    ("too many", json.dumps({"instances": ["x"] * 300}).encode(), "application/json", 413),
    ("content type", b"hello", "text/plain", 415),
    ("6 MiB + 1", b"x" * (SIX_MIB + 1), "application/json", 413),
]
TEXTS = [
    "The pay is fair and my manager listens",
    "Terrible hours, nobody answers my emails",
    "The office moved to the third floor",
]


def test_200_concurrent_requests_some_malformed(served):
    url = served.url
    expected = {
        t: p
        for t, p in zip(
            TEXTS,
            requests.post(f"{url}/invocations", json={"instances": TEXTS}, timeout=30).json()["predictions"],
            strict=True,
        )
    }
    requests.post(
        f"{url}/invocations", data=MALFORMED[-1][1], headers={"Content-Type": "application/json"}, timeout=30
    )  # warm the big-body path before the baseline
    rss_before = served.rss_kib()

    jobs = []
    for i in range(200):
        if i % 4 == 3:  # 50 malformed, every kind several times (the 6 MiB one 6 times)
            jobs.append(("bad", MALFORMED[(i // 4) % len(MALFORMED)]))
        else:
            jobs.append(("ok", [TEXTS[(i + k) % 3] for k in range(1 + i % 5)]))

    def send(job):
        kind, what = job
        if kind == "ok":
            r = requests.post(f"{url}/invocations", json={"instances": what}, timeout=60)
            return kind, what, r.status_code, r.json()
        name, body, ctype, status = what
        r = requests.post(f"{url}/invocations", data=body, headers={"Content-Type": ctype}, timeout=60)
        return kind, what, r.status_code, r.json()

    t0 = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(send, jobs))
    elapsed = time.monotonic() - t0

    ok = [r for r in results if r[0] == "ok"]
    bad = [r for r in results if r[0] == "bad"]
    assert len(ok) == 150 and len(bad) == 50
    for _, texts, status, body in ok:
        assert status == 200, body
        assert body["model_id"] == "serve-1" and len(body["predictions"]) == len(texts)
        for text, pred in zip(texts, body["predictions"], strict=True):
            assert pred == expected[text]  # same answer under load as alone
    for _, (name, _, _, status_expected), status, body in bad:
        assert status == status_expected, (name, status, body)
        assert 400 <= status < 500 and body["error"], name
    rss_growth_mib = (served.rss_kib() - rss_before) / 1024
    print(f"\n200 requests (50 malformed, 6 of 6 MiB+1) in {elapsed:.1f}s; RSS growth {rss_growth_mib:.1f} MiB")
    assert rss_growth_mib < 150, rss_growth_mib
    assert requests.get(f"{url}/ping", timeout=5).status_code == 200
    assert "Traceback" not in served.log.read_text()
