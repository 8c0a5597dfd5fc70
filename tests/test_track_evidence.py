"""W&B (offline) and Prefect artifacts of a run that has a champion: read back from what was written.

The offline run's transaction log (`run-<id>.wandb`) is read record by record, so the test sees what a
later `wandb sync` would send: the dataset artifact used by the run, the model artifact's entries, the
summary with the comparison.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tasks import aliases
from tests.process_helpers import run_artifacts
from trainkite.store import open_store

BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks, 7-byte record headers
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path, timeout: float = 30.0) -> list:
    """The records of a run's transaction log, once it holds the run's end: W&B's service writes the file through
    a buffer that may reach the disk a moment after `run.finish()` returned (seen on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        records = _read_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, parts, out = 7, b"", []
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            parts = chunk
        elif kind == MIDDLE:
            parts += chunk
        elif kind == LAST:
            out.append(parts + chunk)
    return [pb.Record.FromString(c) for c in out]


def _train(params_factory, model_id: str):
    from flows.train import train

    state = train(params=params_factory(**{"tracking.backend": "wandb"}), model_id=model_id, return_state=True)
    return state.result(), state.state_details.flow_run_id


def test_wandb_and_prefect_carry_the_comparison_and_the_lineage(prefect_api, tk_home, params_factory, monkeypatch):
    monkeypatch.delenv("TRAINKITE_DEPLOY_TARGET", raising=False)
    _train(params_factory, "wb-1")
    store = open_store()
    aliases.set_alias(store, "champion", "wb-1", target="sagemaker", set_by="tester")
    result, flow_run_id = _train(params_factory, "wb-2")
    folder = Path(store.local_path("sentiment/wb-2"))
    manifest = json.loads((folder / "manifest.json").read_text())

    (run_dir,) = (Path(os.environ["WANDB_DIR"]) / "wandb").glob("offline-run-*-wb-2")
    records = wandb_records(run_dir / "run-wb-2.wandb")
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    by_type = {a.type: a for a in artifacts}
    assert {"dataset", "model"} <= set(by_type)

    model = by_type["model"]
    entries = {e.path: e for e in model.manifest.contents}
    assert set(entries) == {*manifest["files"], "manifest.json"}
    assert not any(p.startswith(("checkpoints/", "run/")) for p in entries)
    assert entries["weights.safetensors"].ref == (folder / "weights.safetensors").as_uri()
    assert not model.use_after_commit

    data = by_type["dataset"]
    assert data.use_after_commit, "the dataset is an input of the run (data -> run -> model)"
    assert {e.path for e in data.manifest.contents} == {"data/snapshot.parquet", "data/source.json"}
    meta = json.loads(data.metadata)
    assert meta["fingerprint"] == manifest["lineage"]["data"]["fingerprint"]

    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in r.summary.update})
    assert summary["champion/verdict"] == manifest["comparison"]["verdict"] == "no significant difference"
    assert summary["champion/model_id"] == "wb-1" and summary["champion/delta_macro_f1"] == 0.0
    assert summary["champion/mcnemar_p"] == 1.0

    from prefect import get_client

    with get_client(sync_client=True) as c:
        arts = {a.key: a for a in run_artifacts(c, flow_run_id)}
    assert {"champion-comparison", "confusion-matrix", "confusion-matrices", "model-card"} <= set(arts)
    table = arts["champion-comparison"].data
    table = json.loads(table) if isinstance(table, str) else table
    assert {row["metric"] for row in table} >= {"accuracy", "macro_f1", "f1 neutral"}
    assert all(row["champion_id"] == "wb-1" for row in table)
    cm = arts["confusion-matrix"].data
    cm = json.loads(cm) if isinstance(cm, str) else cm
    assert (
        sum(v for row in cm for k, v in row.items() if k != "true \\ predicted")
        == manifest["lineage"]["data"]["counts"]["evaluation"]
    )
    assert arts["confusion-matrices"].data.count("data:image/png;base64,") == 2
    assert "Champion vs challenger" in arts["model-card"].data and "wb-1" in arts["model-card"].data
