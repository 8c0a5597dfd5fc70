"""The process that talks to W&B for a training process: `python -m tasks.wandb_worker`.

`import wandb` is about a second of Python bytecode. Run in a thread of the training process it holds the GIL
against the training loop, so overlapping it with the training saved nothing; in its own process it runs on
another core. This program imports wandb and starts its service at once, says `ready`, then logs one run per
request: a JSON line in on stdin, a JSON line out on stdout ({"ok": true, "run_id", "run_dir"} or
{"ok": false, "error"}). It ends when stdin closes (its parent is gone). It knows nothing of trainkite: the
request holds every value to log (`tasks.track.run_request` builds it).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

# What wandb imports on a process's first run and file reference (yaml, requests: a few tenths of a second):
# done while the training runs, not in the track step.
_FIRST_RUN_MODULES = ("yaml", "requests", "wandb.apis.public", "wandb.sdk.artifacts.artifact")


def _offline_input(run, art) -> None:
    """Log `art` as an input of `run` (data -> run -> model).

    wandb refuses `use_artifact` offline ("Cannot use artifact when in offline mode"); what it does online for a
    new artifact is to log it with `use_after_commit`, and the offline transaction log keeps that flag for
    `wandb sync`. So offline takes that one private call, and falls back to a plain output if wandb changed it.
    """
    if not run.settings._offline:
        run.use_artifact(art)
        return
    try:
        run._log_artifact(art, is_user_created=True, use_after_commit=True)
    except (AttributeError, TypeError):
        print("this wandb cannot record an input artifact offline; the dataset is logged as an output", file=sys.stderr)
        run.log_artifact(art)


def _artifact(wandb, spec: dict):
    art = wandb.Artifact(spec["name"], type=spec["type"], metadata=spec["metadata"])
    for uri, name, checksum in spec["refs"]:
        art.add_reference(uri, name=name, checksum=checksum)
    return art


def log_run(wandb, req: dict) -> dict:
    settings = wandb.Settings(
        x_disable_stats=True, x_save_requirements=False, disable_code=True, disable_git=True, console="off", silent=True
    )
    run = wandb.init(**req["init"], resume="allow", settings=settings, reinit="create_new")
    try:
        for step, row in req["history"]:
            run.log(row, step=step)
        run.summary.update(req["summary"])
        cm = req.get("confusion")
        if cm:
            plot = wandb.plot.confusion_matrix(
                y_true=cm["y_true"], preds=cm["y_pred"], class_names=cm["labels"], title=cm["title"]
            )
            run.log({cm["key"]: plot})
        if req.get("dataset"):
            _offline_input(run, _artifact(wandb, req["dataset"]))
        run.log_artifact(_artifact(wandb, req["model"]), aliases=req["model"]["aliases"])
        return {"ok": True, "run_id": run.id, "run_dir": str(run.settings.sync_dir)}
    finally:
        run.finish()


def _warm_up(wandb) -> None:
    for name in _FIRST_RUN_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    wandb.plot.confusion_matrix(y_true=[0, 1], preds=[0, 1], class_names=["a", "b"], title="warm-up")
    wandb.Artifact("warm-up", type="model").add_reference(Path(__file__).as_uri(), name="warm-up", checksum=True)


def main() -> None:
    # Tracking is background work: the training's own steps (DuckDB, the featurizer on every core) go first.
    os.nice(10)
    # wandb may print; stdout carries the protocol only, so everything else goes to stderr.
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # This process logs no DataFrame; wandb imports pandas (half a second of CPU) only to check for one.
    sys.modules.setdefault("pandas", None)
    try:
        import wandb

        wandb.setup()
        _warm_up(wandb)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which fails the track step with it
        proto.write(json.dumps({"ok": False, "error": f"W&B could not start: {type(err).__name__}: {err}"}) + "\n")
        return
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            reply = log_run(wandb, json.loads(line))
        except Exception as err:  # noqa: BLE001 - one failed run does not end the worker
            reply = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:2000]}"}
        proto.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
