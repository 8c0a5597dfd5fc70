"""`trainkite`: train, predict, list and inspect models; run the local Prefect server.

Every command takes `--json`: exactly one JSON object on stdout, logs on stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from trainkite.errors import TrainkiteError, UserInputError
from trainkite.home import configure_quiet_offline_env

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Reproducible text-classifier training on Prefect.")
server_app = typer.Typer(no_args_is_help=True, help="The local Prefect server trainkite runs in the background.")
app.add_typer(server_app, name="server")
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout; logs go to stderr.")]
RootOpt = Annotated[str | None, typer.Option("--root", help="Artifact store root (folder or s3://...); "
                                             "default $TRAINKITE_ARTIFACTS or $TRAINKITE_HOME/artifacts.")]


def emit(obj: dict, as_json: bool, human: callable | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()
    elif human:
        human()


@contextlib.contextmanager
def user_errors(as_json: bool):
    try:
        yield
    except TrainkiteError as e:
        if as_json:
            emit({"error": str(e), "exit_code": e.exit_code}, True)
        # escape: messages quote user input and things like 'trainkite[encoder]' that are not markup.
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except OSError as e:
        # The last net under every command: a full disk or read-only folder that no layer below named.
        from trainkite.store import disk_error

        message = str(disk_error(f"{type(e).__name__}", e))
        if as_json:
            emit({"error": message, "exit_code": 1}, True)
        err.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(1) from None


class _ProgressHandler(logging.Handler):
    """Drives a rich progress bar from the training loop's progress records."""

    def __init__(self, progress):
        super().__init__()
        self.progress = progress
        self.task = None

    def emit(self, record: logging.LogRecord) -> None:
        info = getattr(record, "trainkite_progress", None)
        if not info:
            return
        total = info["epochs"] * info["steps"]
        done = (info["epoch"] - 1) * info["steps"] + info["step"]
        if self.task is None:
            self.task = self.progress.add_task("training", total=total)
        self.progress.update(self.task, completed=done, total=total,
                             description=f"epoch {info['epoch']}/{info['epochs']}")


def _store(root: str | None):
    from trainkite.store import open_store

    return open_store(root)


@app.command()
def train(
    params_file: Annotated[Path | None, typer.Option("--params", help="Params file (default params/sentiment.toml).")]
    = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="section.key=value, repeatable.")] = None,
    model_id: Annotated[str | None, typer.Option("--model-id", help="Resume/name this model ID.")] = None,
    params_json: Annotated[str | None, typer.Option("--params-json", help="Resolved params as JSON (what a "
                                                    "Batch job receives); replaces --params.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on the data the params file points at (local DuckDB by default)."""
    with user_errors(as_json):
        from params import apply_overrides, load_params, parse_overrides, validate_params

        if params_json is not None:
            try:
                raw = json.loads(params_json)
            except ValueError as e:
                raise UserInputError(f"--params-json is not valid JSON: {e}") from None
            params = validate_params(apply_overrides(raw, parse_overrides(overrides or [])), source="--params-json")
        else:
            params = load_params(params_file, overrides or [])
        configure_quiet_offline_env()
        from trainkite.ids import resolve_model_id
        from trainkite.prefect_server import begin_api, ensure_api

        begin_api()  # the server comes up while the flow's imports (Prefect, torch) load
        from flows.train import train as train_flow  # noqa: F401  (imported here for the overlap)

        ensure_api()
        from buildkite.context import BuildContext

        build = BuildContext.from_env()
        _check_tree(build)
        mid = resolve_model_id(model_id, build)
        result = _run_train(params, mid, build, as_json)
        sample = None
        if not as_json:
            from tasks.predict import Predictor

            text = "The pay is fair but management ignores our workload."
            sample = Predictor.from_store(_store(params.artifacts.root), mid).predict([text])[0]
            sample["text"] = text

        def human():
            err.print(f"[bold green]model[/] {result['model_id']}")
            err.print(f"artifacts  {result['artifact_uri']}")
            for k, v in result["metrics"].items():
                err.print(f"  {k:<22} {v:.4f}")
            if sample:
                err.print(f"sample prediction: {json.dumps(sample)}")
            print(result["model_id"])

        emit(result, as_json, human)


def _check_tree(build) -> None:
    """A model must lead back to a commit: a dirty tree is refused in CI and warned about locally."""
    from trainkite.lineage import git_info

    if not git_info().get("dirty"):
        return
    if build is not None:
        raise UserInputError("the git tree has uncommitted changes; a Buildkite build only trains committed code")
    err.print("[yellow]warning:[/] the git tree has uncommitted changes; the manifest records it as dirty")


def _api_gone(e: BaseException) -> bool:
    """The run failed because its Prefect API stopped answering (not because of the training itself)."""
    import httpx

    seen = e
    for _ in range(5):
        if isinstance(seen, httpx.TransportError):
            return True
        if seen.__cause__ is None and seen.__context__ is None:
            return False
        seen = seen.__cause__ or seen.__context__
    return False


class _NoUserErrorTraceback(logging.Filter):
    """Prefect logs a failed run's exception with its traceback. For an error the user acts on (bad data, a
    taken model ID: a TrainkiteError) the one-line message is the whole story; the README promises no
    traceback. Reliability fix (issue 8): `trainkite train` with an empty query printed ~70 lines of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TrainkiteError):
            record.exc_info, record.exc_text = None, None
        return True


def hide_user_error_tracebacks() -> None:
    """Install the filter on Prefect's run loggers (after Prefect configured logging); idempotent."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoUserErrorTraceback) for f in logger.filters):
            logger.addFilter(_NoUserErrorTraceback())


def _run_train(params, model_id: str, build, as_json: bool) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.train import train as train_flow

    hide_user_error_tracebacks()

    progress_logger = logging.getLogger("trainkite_progress")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=as_json or not err.is_terminal) as progress:
        handler = _ProgressHandler(progress)
        progress_logger.addHandler(handler)
        progress_logger.setLevel(logging.INFO)
        from prefect import tags

        from trainkite.prefect_server import run_tag

        try:
            # The tag names this process, so a later `trainkite server stop`/`status` can mark the run Crashed
            # if this process is killed before it can report an end.
            with contextlib.redirect_stdout(sys.stderr), tags(run_tag()):
                return train_flow(params=params, model_id=model_id, build=build)
        except Exception as e:
            if _api_gone(e):
                raise TrainkiteError(f"the Prefect API at {os.environ.get('PREFECT_API_URL')} went away during the "
                                     f"run ({type(e).__name__}: {str(e)[:200]}); was `trainkite server stop` run? "
                                     "A published model is kept; re-run with the same --model-id to finish") from None
            raise
        finally:
            progress_logger.removeHandler(handler)


@app.command()
def predict(
    model_id: Annotated[str, typer.Argument(help="Model ID (see `trainkite models`).")],
    text: Annotated[list[str] | None, typer.Option("--text", help="Text to classify, repeatable.")] = None,
    input_csv: Annotated[Path | None, typer.Option("--input", help="CSV with a text column.")] = None,
    output_csv: Annotated[Path | None, typer.Option("--output", help="Where to write the scored CSV.")] = None,
    text_column: Annotated[str, typer.Option(help="Text column of --input.")] = "text",
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Classify texts with a published model (hashes verified before loading)."""
    with user_errors(as_json):
        if bool(text) == bool(input_csv):
            raise UserInputError("give either --text TEXT (repeatable) or --input CSV --output CSV")
        if input_csv and not output_csv:
            raise UserInputError("--input needs --output (where the scored CSV goes)")
        from trainkite import cli_predict

        if output_csv:
            cli_predict.check_output(output_csv)  # before the model loads and any row is scored
        from trainkite.manifest import fetch_model

        # Found and verified before torch loads (seconds): a bad or unknown ID is refused at once.
        folder, manifest = fetch_model(_store(root), model_id)
        from tasks.predict import Predictor

        predictor = Predictor(folder, manifest)
        if text:
            scored = predictor.predict(text)
            cli_predict.check_finite_predictions(scored, predictor.model_id)
            preds = [{"text": t, **p} for t, p in zip(text, scored, strict=True)]
            emit({"model_id": predictor.model_id, "predictions": preds}, as_json,
                 lambda: [print(json.dumps(p)) for p in preds])
            return
        done = cli_predict.score_csv(predictor, input_csv, output_csv, text_column,
                                     None if as_json else cli_predict.progress_printer())
        emit({"model_id": predictor.model_id, "rows": done["rows"], "output": str(output_csv),
              "columns": done["columns"]}, as_json,
             lambda: err.print(f"wrote {done['rows']} predictions to {output_csv}"))


@app.command()
def models(root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """List published models with their metrics."""
    with user_errors(as_json):
        from trainkite.manifest import list_models_report

        store = _store(root)
        ms, broken = list_models_report(store)  # a broken folder is reported, not fatal to the listing
        rows = [{"model_id": m["model_id"], "model_name": m["model_name"], "created_at": m["created_at"],
                 "metrics": m.get("metrics", {}), "uri": store.uri(f"{m['model_name']}/{m['model_id']}")}
                for m in ms]

        def human():
            from rich.table import Table

            t = Table("model ID", "name", "created", "test acc", "test macro-F1", "eval acc")
            for r in rows:
                m = r["metrics"]
                t.add_row(r["model_id"], r["model_name"], r["created_at"],
                          *(f"{m[k]:.4f}" if k in m else "-" for k in
                            ("test_accuracy", "test_macro_f1", "evaluation_accuracy")))
            Console().print(t)

        for b in broken:  # on stderr in both modes: --json has them under "broken" too
            err.print(f"[yellow]skipped[/] {escape(b['model'])}: {escape(b['error'])}", highlight=False,
                      soft_wrap=True)
        emit({"root": store.root, "models": rows, "broken": broken}, as_json, human)


@app.command()
def show(model_id: str, root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """Print a model's manifest (lineage, metrics, file hashes)."""
    with user_errors(as_json):
        from trainkite.manifest import find_model, read_manifest

        store = _store(root)
        m = read_manifest(store, find_model(store, model_id))
        emit(m, as_json, lambda: print(json.dumps(m, indent=2, sort_keys=True)))


@server_app.command("start")
def server_start(as_json: JsonOpt = False) -> None:
    """Start the local Prefect server (UI at the printed URL)."""
    with user_errors(as_json):
        from trainkite.prefect_server import start

        s = start(quiet=as_json)
        emit(s, as_json, lambda: err.print(f"Prefect server at {s['url'][:-4]} (pid {s['pid']}); "
                                           "stop it with `trainkite server stop`"))


@server_app.command("prepare")
def server_prepare(as_json: JsonOpt = False) -> None:
    """Migrate an empty Prefect database once per Prefect version, so a new TRAINKITE_HOME starts fast."""
    with user_errors(as_json):
        from trainkite.prefect_server import prepare_database

        path = prepare_database()
        emit({"template": str(path)}, as_json, lambda: err.print(f"Prefect database template: {path}"))


@server_app.command("stop")
def server_stop(
    force: Annotated[bool, typer.Option("--force", help="Stop even while flow runs are active (they are "
                                        "marked Crashed first).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop the local Prefect server (refused while flow runs are active, unless --force)."""
    with user_errors(as_json):
        from trainkite.prefect_server import stop

        stopped = stop(force=force)
        emit({"stopped": stopped}, as_json, lambda: err.print("stopped" if stopped else "not running"))


@server_app.command("status")
def server_status(as_json: JsonOpt = False) -> None:
    """Is the local Prefect server running?"""
    from trainkite.prefect_server import reap_orphans, status

    s = status() or {"running": False}
    if s.get("healthy"):
        with contextlib.suppress(Exception):  # a status that cannot reap still reports
            s["reaped"] = [r["name"] for r in reap_orphans(s["url"])]
    s.setdefault("running", True)
    emit(s, as_json, lambda: err.print(json.dumps(s)))


# Command groups that live next to what they drive; each module has `register(app)`.
_EXTENSIONS = (
    "trainkite.cli_serving",
    "trainkite.cli_buildkite",
    "trainkite.cli_deployments",
    "trainkite.cli_repro",
    "trainkite.cli_sweep",
    "trainkite.cli_evidence",
)


def _register_extensions() -> None:
    import importlib

    for name in _EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(app)


_register_extensions()


def main() -> None:
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "trainkite")
    app()


if __name__ == "__main__":
    main()
