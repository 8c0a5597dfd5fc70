"""Weights & Biases tracking: resolved params as config, per-epoch metrics, confusion matrix, the model.

Offline by default (`WANDB_MODE=offline`, set by trainkite unless the user set it); the run ID
is derived from the model ID, so the manifest can name the run before it exists.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from params.model import Params
from tasks.evaluate import EvalReport
from tasks.publish import Published
from trainkite.store import ArtifactStore

log = logging.getLogger("trainkite.track")

REPLY_TIMEOUT_S = 600.0  # wandb.init online waits up to 90 s for its server; a publish's files can be large


class TrackingError(RuntimeError):
    """W&B could not start or refused the run; the message is W&B's."""


class _Worker:
    """One `python -m tasks.wandb_worker` child: W&B's import and service start run on another core (a thread of
    this process would hold the GIL against the training loop); `request` logs one run through it."""

    def __init__(self, env_key: tuple):
        self.env_key = env_key
        env = dict(os.environ)
        root = Path(__file__).resolve().parent.parent
        if (root / "pyproject.toml").is_file():  # a source checkout: `tasks` importable without an install too
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.wandb_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            # Ctrl-C reaches the training process, which ends the worker by closing its stdin.
            start_new_session=True,
        )
        self.replies: queue.Queue = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.ready = False
        threading.Thread(target=self._read_replies, daemon=True, name="trainkite-wandb-replies").start()
        threading.Thread(target=self._read_stderr, daemon=True, name="trainkite-wandb-stderr").start()

    def _read_replies(self) -> None:
        for line in self.proc.stdout:
            try:
                self.replies.put(json.loads(line))
            except ValueError:  # the protocol is one JSON object per line; anything else is noise
                log.debug("wandb worker: %s", line.rstrip())
        self.replies.put(None)

    def _read_stderr(self) -> None:
        # W&B's own output stays out of the terminal (the worker's stderr is a pipe), at debug level here.
        for line in self.proc.stderr:
            self.stderr_tail.append(line.rstrip())
            log.debug("wandb: %s", line.rstrip())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _reply(self, timeout: float) -> dict:
        try:
            reply = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise TrackingError(f"W&B did not answer within {timeout:.0f} s") from None
        if reply is None:
            raise self._exited()
        if not reply.get("ok", True):
            raise TrackingError(reply["error"])
        return reply

    def _exited(self) -> TrackingError:
        tail = "; ".join(self.stderr_tail) or "no output"
        return TrackingError(f"the W&B worker exited (code {self.proc.wait()}): {tail[-1500:]}")

    def request(self, req: dict, timeout: float = REPLY_TIMEOUT_S) -> dict:
        if not self.ready:
            self._reply(timeout)
            self.ready = True
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except OSError:
            raise self._exited() from None
        return self._reply(timeout)

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _wandb_env() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("WANDB_")))


def _get_worker() -> _Worker:
    """This process's worker, started if there is none, it died, or W&B's environment changed since (W&B reads
    it when its service starts)."""
    global _worker
    env_key = _wandb_env()
    if _worker is None or not _worker.alive() or _worker.env_key != env_key:
        if _worker is not None:
            _worker.close()
        _worker = _Worker(env_key)
    return _worker


def start(params: Params) -> None:
    """Begin W&B's slow start now, in its own process: `import wandb` (about a second of CPU) and its service.

    Called when the run starts, so that this runs on another core while the data is fetched, preprocessed and
    trained on; `track_run` then only sends what to log. Returns at once; does nothing when tracking is off.
    """
    if params.tracking.backend == "none":
        return
    with _worker_lock:
        _get_worker()


def track_run(
    *, params: Params, published: Published, report: EvalReport, store: ArtifactStore, tags: list[str] | None = None
) -> dict | None:
    if params.tracking.backend == "none":
        log.info("tracking is off (tracking.backend = 'none')")
        return None
    req = run_request(params=params, published=published, report=report, store=store, tags=tags or [])
    with _worker_lock:
        reply = _get_worker().request(req)
    return {
        "run_id": reply["run_id"],
        "project": params.tracking.project,
        "entity": params.tracking.entity,
        "mode": os.environ.get("WANDB_MODE", "online"),
        "run_dir": reply["run_dir"],
    }


def run_request(
    *, params: Params, published: Published, report: EvalReport, store: ArtifactStore, tags: list[str]
) -> dict:
    """Everything the W&B run gets, as plain JSON: the resolved params as config, per-epoch metrics, the
    summary (with the champion comparison), the confusion matrix, the dataset (an input) and the model."""
    # A sweep's runs carry its ID as a tag (`sweep-...`); W&B groups them under it.
    group = next((t for t in tags if t.startswith("sweep-")), None)
    summary = {**report.summary, "model_id": published.model_id, "artifact_uri": published.artifact_uri}
    comparison = report.metrics.get("comparison")
    if comparison:
        summary.update(comparison_summary(comparison))
    # References to exactly the manifest's files (and the manifest), not the folder: a model folder may
    # also hold scratch (checkpoints/, run/) that is no part of the model.
    model = {
        "name": f"model-{published.model_name}",
        "type": "model",
        "metadata": {"model_id": published.model_id, **report.summary},
        "refs": manifest_refs(published, store, [*published.manifest["files"], "manifest.json"]),
        "aliases": [published.model_id],
    }
    return {
        "init": {
            "project": params.tracking.project,
            "entity": params.tracking.entity,
            "id": published.manifest["lineage"]["wandb"]["run_id"],
            "name": published.model_id,
            "config": params.model_dump(mode="json"),
            "job_type": "train",
            "tags": tags,
            "group": group,
        },
        "history": [
            [int(row["epoch"]), {k: v for k, v in row.items() if k != "epoch"}]
            for row in report.metrics.get("history", [])
        ],
        "summary": summary,
        "confusion": confusion_request(report, published.manifest["labels"]),
        "dataset": dataset_request(published, store),
        "model": model,
    }


def confusion_request(report: EvalReport, labels: list[str]) -> dict | None:
    """The scored split's confusion matrix as W&B's plot takes it (one true and one predicted index per row)."""
    split = "evaluation" if "evaluation" in report.metrics else "test"
    if split not in report.metrics or report.metrics[split]["confusion"] is None:
        return None
    y_true, y_pred = [], []
    for i, row in enumerate(report.metrics[split]["confusion"]):
        for j, count in enumerate(row):
            y_true += [i] * count
            y_pred += [j] * count
    return {
        "key": f"{split}_confusion",
        "title": f"{split} confusion",
        "labels": labels,
        "y_true": y_true,
        "y_pred": y_pred,
    }


DATA_FILES = ("data/snapshot.parquet", "data/source.json")


def manifest_refs(published: Published, store: ArtifactStore, files: list[str]) -> list[tuple[str, str, bool]]:
    """(uri, name, checksum) per published file, named by its path in the model folder; local files checksummed."""
    prefix = f"{published.model_name}/{published.model_id}"
    refs = []
    for rel in files:
        local = store.local_path(f"{prefix}/{rel}")
        if local is not None:
            refs.append((Path(local).as_uri(), rel, True))
        else:
            refs.append((f"{published.artifact_uri}/{rel}", rel, False))
    return refs


def dataset_request(published: Published, store: ArtifactStore) -> dict | None:
    """The rows the model was trained and judged on (the published snapshot and its source), or None when the
    model kept only the data's fingerprint."""
    files = [rel for rel in DATA_FILES if rel in published.manifest["files"]]
    if not files:
        return None
    data = published.manifest["lineage"]["data"]
    return {
        "name": f"data-{published.model_name}",
        "type": "dataset",
        "metadata": {
            "fingerprint": data["fingerprint"],
            "query": data.get("query"),
            "evaluation_query": data.get("evaluation_query"),
            "counts": data.get("counts"),
            "source": data.get("source"),
            "sha256": {rel: published.manifest["files"][rel]["sha256"] for rel in files},
        },
        "refs": manifest_refs(published, store, files),
    }


def comparison_summary(comparison: dict) -> dict:
    """The champion comparison as flat run-summary keys (W&B's run table can sort and filter them)."""
    out = {
        "champion/verdict": comparison.get("verdict"),
        "champion/model_id": (comparison.get("champion") or {}).get("model_id"),
    }
    if "metrics" in comparison:
        out.update({f"champion/{who}_{m}": v for who, ms in comparison["metrics"].items() for m, v in ms.items()})
        out.update({f"champion/delta_{m}": v for m, v in comparison["deltas"].items()})
        out.update({f"champion/delta_f1_{lab}": v["delta"] for lab, v in comparison["per_class_f1"].items()})
        out["champion/mcnemar_p"] = comparison["mcnemar"]["p_value"]
        out["champion/macro_f1_ci_low"] = comparison["bootstrap"]["ci_low"]
        out["champion/macro_f1_ci_high"] = comparison["bootstrap"]["ci_high"]
        out["champion/n"] = comparison["n"]
        out["champion/allow_worse"] = bool(comparison.get("allow_worse"))
    return out


def run_url(info: dict | None) -> str | None:
    if not info or info.get("mode") in ("offline", "disabled"):
        return None
    base = os.environ.get("WANDB_BASE_URL_APP", "https://wandb.ai")
    entity = info.get("entity") or ""
    return f"{base}/{entity}/{info['project']}/runs/{info['run_id']}" if entity else None
