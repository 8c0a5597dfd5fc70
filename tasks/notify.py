"""Tell the Buildkite build how training went: unblock `training_finished` with the values the
deploy step needs, and annotate. Outside a build: one log line, nothing else."""

from __future__ import annotations

import json
import logging
import os

from buildkite.context import BuildContext
from tasks.build_watch import canceled_reason

log = logging.getLogger("trainkite.notify")

STATUS_FIELD = "training-status"


def model_env(model_id: str, artifact_uri: str) -> dict[str, str]:
    """Env for the serving container: plain settings and secret *names/ARNs*, never secret values."""
    env = {"TRAINKITE_MODEL_ID": model_id, "TRAINKITE_MODEL_URI": artifact_uri}
    refs = os.environ.get("TRAINKITE_SERVING_SECRET_ARNS")
    if refs:
        env.update({k: v for k, v in json.loads(refs).items() if v.startswith("arn:")})
    return env


VERDICT_FIELD = "comparison-verdict"
CHAMPION_FIELD = "champion-model-id"


def success_fields(
    *,
    model_id: str,
    artifact_uri: str,
    wandb_run_id: str | None,
    docker_image: str | None,
    metrics_line: str,
    comparison: dict | None = None,
) -> dict[str, str]:
    champion = (comparison or {}).get("champion") or {}
    return {
        VERDICT_FIELD: (comparison or {}).get("verdict") or "no champion",
        CHAMPION_FIELD: champion.get("model_id") or "none",
        "model-id": model_id,
        "model-data-path": artifact_uri,
        "wandb-run-id": wandb_run_id or "none",
        "model-env": json.dumps(model_env(model_id, artifact_uri), sort_keys=True),
        "docker-image": docker_image or "none",
        "metrics": metrics_line,
        STATUS_FIELD: "passed",
    }


def failure_reason(state_type: str, message: str | None) -> str:
    """The one wording of a failure. The in-process hook and the release-build flow both unblock with
    fields built from it; the unblock is idempotent only for identical values."""
    return f"{state_type}: {message or ''}".strip()


def failure_fields(model_id: str, reason: str) -> dict[str, str]:
    # Every field gets a value so the step is released; `review` turns "failed" into a red step.
    return {
        "model-id": model_id,
        "model-data-path": "none",
        "wandb-run-id": "none",
        "model-env": "{}",
        "docker-image": "none",
        "metrics": f"training failed: {reason}"[:900],
        VERDICT_FIELD: "not compared",
        CHAMPION_FIELD: "none",
        STATUS_FIELD: "failed",
    }


def client_for(build: BuildContext):
    from buildkite.client import BuildkiteClient

    return BuildkiteClient(org=build.organization, pipeline=build.pipeline)


def _unblock(client, build: BuildContext, fields: dict[str, str]) -> str | None:
    """Unblock; None when done, else why there is nothing left to do: the build was canceled (nothing can
    unblock it now), or this is a failure and another path already released the step as failed (the Batch
    job's own run and its train-batch run word the same failure differently)."""
    from buildkite.client import BuildkiteError

    try:
        client.unblock(build.number, build.step_key, fields)
        return None
    except BuildkiteError as err:
        # A refused token or scope (401/403/404) says nothing about the build: do not ask again.
        if err.status not in (None, 422):
            raise
        current = client.get_build(build.number)
        reason = canceled_reason(current)
        if reason is not None:
            log.warning("%s; its step %s stays as it is", reason, build.step_key)
            return "skipped: build canceled"
        if fields[STATUS_FIELD] == "failed" and (current.get("meta_data") or {}).get(STATUS_FIELD) == "failed":
            log.info("step %s of build #%s was already released as failed", build.step_key, build.number)
            return "already released"
        raise


def _annotate(client, build: BuildContext, body: str, style: str) -> None:
    # The annotation is a report, the unblock is what releases the build. A
    # refused or failing annotation used to raise before the unblock and leave the build waiting.
    from buildkite.client import BuildkiteError

    try:
        client.annotate(build.number, body, context="trainkite-training", style=style)
    except BuildkiteError as err:
        log.warning("could not annotate build %s #%s (unblocking it anyway): %s", build.pipeline, build.number, err)


def notify_success(build: BuildContext | None, fields: dict[str, str], annotation: str) -> str:
    if build is None:
        log.info("not inside a Buildkite build: nothing to unblock (model %s)", fields["model-id"])
        return "skipped"
    client = client_for(build)
    _annotate(client, build, annotation, "success")
    outcome = _unblock(client, build, fields)
    if outcome:
        # The model is published and tracked; only the build stopped waiting for it.
        return outcome
    log.info("unblocked %s of build %s #%s", build.step_key, build.pipeline, build.number)
    return "unblocked"


def notify_failure(
    build: BuildContext | None, *, model_id: str, flow_run: str, reason: str, failed_step: str | None = None
) -> str:
    if build is None:
        log.info("not inside a Buildkite build: nothing to release (model %s failed: %s)", model_id, reason)
        return "skipped"
    client = client_for(build)
    body = (
        f"**Training failed** for `{model_id}`\n\n- flow run: `{flow_run}`\n"
        f"- failed step: `{failed_step or 'unknown'}`\n- reason: {reason[:500]}"
    )
    _annotate(client, build, body, "error")
    return _unblock(client, build, failure_fields(model_id, reason)) or "released"


def annotation_markdown(
    model_id: str, artifact_uri: str, summary: dict[str, float], wandb: str, comparison: dict | None = None
) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in summary.items())
    body = (
        f"### Model `{model_id}`\n\n| metric | value |\n|---|---|\n{rows}\n\n"
        f"- artifacts: `{artifact_uri}`\n- W&B: {wandb}\n"
    )
    if comparison is not None:
        body += "\n" + comparison_markdown(comparison, model_id, challenger_wandb=wandb)
    return body


def wandb_link(
    run_id: str | None, project: str | None = None, entity: str | None = None, env: dict | None = None
) -> str:
    """A W&B run as a link when its entity is known (online), else its ID and how to see it."""
    env = os.environ if env is None else env
    if not run_id or run_id == "none":
        return "tracking was off"
    entity = entity or env.get("WANDB_ENTITY")
    if entity:
        base = env.get("WANDB_BASE_URL_APP", "https://wandb.ai")
        return f"[{run_id}]({base}/{entity}/{project or env.get('WANDB_PROJECT', 'trainkite')}/runs/{run_id})"
    return f"offline run ID `{run_id}` (`wandb sync` it to see it online)"


_VERDICT_ICON = {"better": ":white_check_mark:", "no significant difference": ":heavy_minus_sign:", "worse": ":x:"}


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def comparison_markdown(
    comparison: dict,
    model_id: str,
    *,
    challenger_wandb: str | None = None,
    images: dict[str, str] | None = None,
    override: str | None = None,
) -> str:
    """Champion against challenger for the people who press Deploy?: side by side, the verdict with its
    p-value and interval, per-class F1, both confusion matrices (`images`: artifact paths), flipped rows."""
    verdict = comparison.get("verdict", "not compared")
    champ = comparison.get("champion") or {}
    if not champ.get("model_id") or "metrics" not in comparison:
        why = comparison.get("reason") or "no champion yet"
        head = "**No champion yet**" if verdict == "no champion" else f"**Champion not compared** (`{verdict}`)"
        return f"#### Champion vs challenger\n\n{head}: {why}. Nothing to compare `{model_id}` with.\n"
    cid = champ["model_id"]
    m, bt = comparison["mcnemar"], comparison["bootstrap"]
    lines = [
        "#### Champion vs challenger",
        "",
        f"**Verdict: {_VERDICT_ICON.get(verdict, '')} {verdict}** on `{comparison['primary_metric']}`, "
        f"{comparison['n']} {comparison.get('split', 'evaluation')} rows, alpha {comparison['alpha']}: "
        f"McNemar exact p = {m['p_value']:.3g} (champion alone right {m['champion_only_right']}, "
        f"challenger alone right {m['challenger_only_right']}); macro-F1 delta {bt['delta']:+.4f}, "
        f"{bt['confidence']:.0%} paired bootstrap CI [{bt['ci_low']:+.4f}, {bt['ci_high']:+.4f}] "
        f"({bt['resamples']} resamples, seed {bt['seed']}).",
        "",
    ]
    if override:
        lines += [override, ""]
    lines += [f"| | champion `{cid}` | challenger `{model_id}` | delta |", "|---|---|---|---|"]
    for metric in ("accuracy", "macro_f1"):
        a, b = comparison["metrics"]["champion"][metric], comparison["metrics"]["challenger"][metric]
        lines.append(f"| {metric} | {a:.4f} | {b:.4f} | {comparison['deltas'][metric]:+.4f} |")
    for lab, pc in comparison.get("per_class_f1", {}).items():
        lines.append(f"| F1 `{lab}` | {_cell(pc['champion'])} | {_cell(pc['challenger'])} | {pc['delta']:+.4f} |")
    where = f"{champ.get('target')}" + (f" `{champ['endpoint']}`" if champ.get("endpoint") else "")
    w = champ.get("wandb") or {}
    champ_wandb = wandb_link(w.get("run_id"), w.get("project"), w.get("entity"))
    lines += [
        "",
        f"- champion: `{cid}`, live on {where} since {champ.get('since')} ({champ.get('source')}, "
        f"by {champ.get('set_by') or 'unknown'}); W&B: {champ_wandb}",
        f"- challenger: `{model_id}`; W&B: {challenger_wandb or 'tracking was off'}",
    ]
    if images:
        lines += ["", "<table><tr><th>champion</th><th>challenger</th></tr><tr>"]
        for who in ("champion", "challenger"):
            src = images.get(who)
            lines.append(
                f'<td><img src="artifact://{src}" alt="{who} confusion matrix" height=250></td>'
                if src
                else "<td>-</td>"
            )
        lines.append("</tr></table>")
    flipped = comparison.get("flipped") or {}
    for kind, title in (("fixed", "champion wrong, challenger right"), ("broken", "champion right, challenger wrong")):
        rows = flipped.get(kind) or []
        total = flipped.get(f"{kind}_total", len(rows))
        if not total:
            continue
        lines += [
            "",
            f"<details><summary>{total} row(s) {title} (showing {len(rows)})</summary>",
            "",
            "| label | champion | challenger | text |",
            "|---|---|---|---|",
        ]
        for r in rows:
            text = str(r.get("text", "")).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")
            lines.append(f"| {r['label']} | {r['champion']} | {r['challenger']} | {text} |")
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
