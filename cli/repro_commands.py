"""`trainkite verify` and `trainkite lineage`: prove a model and trace any prediction back to its build."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.main import JsonOpt, RootOpt, emit, err, user_errors
from trainkite.errors import UserInputError


def _store(root):
    from trainkite.store import open_store

    return open_store(root)


def verify(
    model_id: str,
    root: RootOpt = None,
    tolerance: Annotated[float, typer.Option(help="Max abs diff for GPU-trained models.")] = 1e-4,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild a model from its manifest alone and compare its weights (exit 0 identical, 1 different)."""
    with user_errors(as_json):
        from trainkite.manifest import fetch_model

        # Found and hash-verified before torch and the flow's imports load: a bad or unknown ID is refused at once.
        folder, manifest = fetch_model(_store(root), model_id)
        from tasks.verify import verify_fetched

        r = verify_fetched(folder, manifest, model_id, tolerance)
        differing = {k: v for k, v in r.tensors.items() if not v["equal"]}
        out = {
            "model_id": r.model_id,
            "ok": r.ok,
            "mode": r.mode,
            "identical": r.identical,
            "equal_within_tolerance": r.equal_within_tolerance,
            "differing_tensors": differing,
            "lineage_changes": r.lineage_changes,
            "params_changes": r.params_changes,
            "data": r.data_check,
        }

        def human():
            if r.ok and r.mode == "bit-identical":
                err.print(f"[green]bit-identical[/]: {model_id} rebuilt from its manifest ({r.data_check})")
            elif r.ok:
                err.print(
                    f"[green]equal within tolerance {tolerance}[/] (GPU-trained model, rebuilt on CPU; "
                    "GPU kernels are not bit-reproducible)"
                )
            else:
                err.print(f"[red]not reproduced[/]: {model_id}")
                for name, d in differing.items():
                    err.print(f"  tensor {name}: max abs diff {d.get('max_abs_diff', d.get('reason'))}")
            for k, v in r.params_changes.items():
                err.print(f"  param {k}: manifest {v['manifest']!r} vs params.json {v['params.json']!r}")
            for k, v in r.lineage_changes.items():
                err.print(f"  lineage {k}: model {v['model']!r}, now {v['now']!r}")

        emit(out, as_json, human)
        if not r.ok or r.params_changes:
            raise typer.Exit(1)


def _prediction_model_id(arg: str) -> str:
    p = Path(arg)
    text = p.read_text() if p.is_file() else arg
    try:
        obj = json.loads(text)
    except ValueError:
        raise UserInputError("--prediction must be a JSON object (or a file holding one) with a model_id") from None
    if isinstance(obj, dict) and "predictions" in obj and obj["predictions"]:
        obj = obj["predictions"][0]
    if not isinstance(obj, dict) or not obj.get("model_id"):
        raise UserInputError("--prediction: no model_id in that JSON")
    return str(obj["model_id"])


def lineage(
    model_id: Annotated[str | None, typer.Argument()] = None,
    prediction: Annotated[str | None, typer.Option("--prediction", help="A prediction (JSON or file).")] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Where a model (or a prediction) came from: build, commit, params, data, W&B, packages, deployments."""
    with user_errors(as_json):
        if bool(model_id) == bool(prediction):
            raise UserInputError("give a MODEL_ID or --prediction JSON_OR_FILE")
        model_id = model_id or _prediction_model_id(prediction)
        from trainkite.manifest import find_model, read_manifest

        store = _store(root)
        m = read_manifest(store, find_model(store, model_id))
        lin = m["lineage"]
        out = {
            "model_id": m["model_id"],
            "model_name": m["model_name"],
            "created_at": m["created_at"],
            "artifact_uri": store.uri(f"{m['model_name']}/{m['model_id']}"),
            "build": lin.get("build"),
            "git": lin.get("git"),
            "params_hash": lin.get("params_hash"),
            "params": lin.get("params"),
            "data": lin.get("data"),
            "wandb": lin.get("wandb"),
            "docker_image": lin.get("docker_image"),
            "packages": lin.get("packages"),
            "device": lin.get("device"),
            "seed": lin.get("seed"),
            "code_version": lin.get("code_version"),
            "metrics": m.get("metrics"),
            "deployments": _deployments_of(store, model_id),
        }

        def human():
            t = Table("field", "value", show_header=False)
            b = out["build"] or {}
            t.add_row("model", f"{out['model_id']} ({out['model_name']}, {out['created_at']})")
            t.add_row("artifacts", out["artifact_uri"])
            t.add_row("build", f"#{b.get('number')} {b.get('url') or ''}" if b else "local run (no build)")
            g = out["git"] or {}
            t.add_row("commit", f"{g.get('commit')}{' (dirty tree)' if g.get('dirty') else ''}")
            t.add_row("params hash", str(out["params_hash"]))
            d = out["data"] or {}
            t.add_row("data", f"{d.get('source')}: {d.get('query')}")
            t.add_row("fingerprint", str(d.get("fingerprint")))
            w = out["wandb"] or {}
            t.add_row("W&B run", str(w.get("run_id", "tracking off")))
            t.add_row("docker image", str(out["docker_image"]))
            t.add_row("device / seed", f"{out['device']} / {out['seed']}")
            t.add_row("packages", ", ".join(f"{k} {v}" for k, v in (out["packages"] or {}).items()))
            t.add_row("metrics", ", ".join(f"{k}={v}" for k, v in (out["metrics"] or {}).items()))
            t.add_row(
                "deployed",
                "; ".join(
                    f"{x.get('target')} {x.get('endpoint') or ''} {x.get('time') or ''}" for x in out["deployments"]
                )
                or "nowhere",
            )
            Console().print(t)

        emit(out, as_json, human)


def _deployments_of(store, model_id: str) -> list[dict]:
    """Entries of the deployment log (written by the deploy flow) that name this model."""
    try:
        from tasks.deploy_log import read_log
    except ImportError:
        return []
    return [e for e in read_log(store) if e.get("model_id") == model_id]


def register(app: typer.Typer) -> None:
    app.command()(verify)
    app.command()(lineage)
