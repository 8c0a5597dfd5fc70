"""The review step (buildkite/pipeline.yml, after `training_finished`): the evidence for Deploy?.

Runs on an agent, inside the build: reads what the flow reported (build meta-data), fetches the model
from its artifact folder (hashes verified), uploads the challenger's and the champion's confusion
matrices as build artifacts, annotates the build with champion against challenger (the images embedded
with `artifact://`), and fails when the challenger is significantly worse than the champion unless the
build sets TRAINKITE_ALLOW_WORSE=1 (the run records the override in the model's lineage).

Training that did not pass is handled before this, by review.sh.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import tasks.compare
import tasks.notify
from tasks.champion import ALLOW_WORSE_ENV, allow_worse
from trainkite.errors import TrainkiteError

log = logging.getLogger("trainkite.review")

CONTEXT = "trainkite-review"
ARTIFACT_DIR = "trainkite-review"
AGENT_TIMEOUT_S = 120


class AgentError(TrainkiteError):
    pass


def agent(*args: str, stdin: str | None = None, cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["buildkite-agent", *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=AGENT_TIMEOUT_S
        )
    except FileNotFoundError:
        raise AgentError("buildkite-agent is not on PATH: the review step runs inside a Buildkite job") from None
    except subprocess.TimeoutExpired:
        raise AgentError(f"buildkite-agent {' '.join(args[:2])} did not answer within {AGENT_TIMEOUT_S} s") from None
    if out.returncode != 0:
        raise AgentError(f"buildkite-agent {' '.join(args[:2])} failed: {out.stderr.strip()[-500:]}")
    return out.stdout


def meta(key: str, default: str | None = None) -> str:
    return agent("meta-data", "get", key, *(["--default", default] if default is not None else []))


def store_root(artifact_uri: str) -> str:
    """`<root>/<model name>/<model id>` -> `<root>` (a folder or s3://bucket/prefix)."""
    return artifact_uri.rstrip("/").rsplit("/", 2)[0]


def _fetch(artifact_uri: str, model_id: str):
    from trainkite.manifest import fetch_model
    from trainkite.store import open_store

    return fetch_model(open_store(store_root(artifact_uri)), model_id)


def upload_images(folder: Path, comparison: dict | None, model_id: str) -> dict[str, str]:
    """Copy both confusion matrices under `trainkite-review/<model id>/` and upload them; artifact paths."""
    split = (comparison or {}).get("split") or (
        "evaluation" if (folder / "plots/confusion_evaluation.png").is_file() else "test"
    )
    sources = {
        "challenger": folder / "plots" / f"confusion_{split}.png",
        "champion": folder / "plots" / "confusion_champion.png",
    }
    found = {who: path for who, path in sources.items() if path.is_file()}
    if not found:
        return {}
    # Upload from a scratch folder: the job's checkout is not ours to write into.
    work = Path(tempfile.mkdtemp(prefix="trainkite-review-"))
    try:
        rel = {who: f"{ARTIFACT_DIR}/{model_id}/{who}-confusion.png" for who in found}
        for who, path in found.items():
            (work / rel[who]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, work / rel[who])
        agent("artifact", "upload", ";".join(rel.values()), cwd=work)
        return rel
    finally:
        shutil.rmtree(work, ignore_errors=True)


def review_markdown(
    *,
    model_id: str,
    artifacts: str,
    metrics: dict,
    wandb: str,
    comparison: dict | None,
    images: dict[str, str],
    override: str | None,
    blocked: str | None,
) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, int | float))
    parts = [f"### Review: model `{model_id}`\n"]
    if blocked:
        parts.append(f"**{blocked}**\n")
    parts.append(f"| metric | value |\n|---|---|\n{rows}\n")
    parts.append(f"- W&B: {wandb}\n- artifacts: `{artifacts}`\n")
    parts.append(
        tasks.notify.comparison_markdown(
            comparison or {"verdict": tasks.compare.NO_CHAMPION},
            model_id,
            challenger_wandb=wandb,
            images=images,
            override=override,
        )
    )
    if not blocked:
        parts.append("Press **Deploy?** to put it live.\n")
    return "\n".join(parts)


def run_review(strict: bool = True, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    model_id, artifacts = meta("model-id"), meta("model-data-path")
    wandb_run = meta("wandb-run-id", "none")
    reported = meta(tasks.notify.VERDICT_FIELD, tasks.compare.NO_CHAMPION)
    folder, manifest = _fetch(artifacts, model_id)
    comparison = manifest.get("comparison")
    verdict = (comparison or {}).get("verdict") or reported
    if comparison and reported != verdict:
        log.warning("the block field says %r, the manifest %r: the manifest is what was published", reported, verdict)
    images = upload_images(folder, comparison, model_id)
    lineage = (manifest.get("lineage") or {}).get("champion") or {}
    override = blocked = None
    if verdict == tasks.compare.WORSE:
        champ = ((comparison or {}).get("champion") or {}).get("model_id")
        if allow_worse(env):
            recorded = (
                "recorded in the lineage"
                if lineage.get("allow_worse")
                else ("**not** in the lineage: the training run did not see it")
            )
            override = (
                f":warning: **Significantly worse than the champion `{champ}`, let through by "
                f"`{ALLOW_WORSE_ENV}=1`** ({recorded})."
            )
        elif strict:
            blocked = (
                f"Review failed: `{model_id}` is significantly worse than the champion `{champ}`. "
                f"Set `{ALLOW_WORSE_ENV}=1` on a new build to deploy it anyway."
            )
    style = "error" if blocked else "warning" if override or verdict == tasks.compare.NOT_COMPARED else "success"
    body = review_markdown(
        model_id=model_id,
        artifacts=artifacts,
        metrics=manifest.get("metrics") or {},
        wandb=tasks.notify.wandb_link(wandb_run, env=env),
        comparison=comparison,
        images=images,
        override=override,
        blocked=blocked,
    )
    agent("annotate", "--style", style, "--context", CONTEXT, stdin=body)
    print(f"--- :clipboard: {model_id}: {tasks.compare.evidence_line(comparison)}")
    if images:
        print("uploaded: " + ", ".join(images.values()))
    if blocked:
        print(blocked, file=sys.stderr)
        return 1
    return 0
