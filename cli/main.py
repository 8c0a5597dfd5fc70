"""`trainkite`: train, predict, list and inspect models; run the local Prefect server.

Every command takes `--json`: exactly one JSON object on stdout, logs on stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from trainkite.errors import TrainkiteError, UserInputError
from trainkite.home import configure_quiet_offline_env

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Reproducible text-classifier training on Prefect.",
)
server_app = typer.Typer(no_args_is_help=True, help="The local Prefect server trainkite runs in the background.")
app.add_typer(server_app, name="server")
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout; logs go to stderr.")]
RootOpt = Annotated[
    str | None,
    typer.Option(
        "--root",
        help="Artifact store root (folder or s3://...); default $TRAINKITE_ARTIFACTS or $TRAINKITE_HOME/artifacts.",
    ),
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("trainkite")
        except PackageNotFoundError:  # run from a checkout that was never installed
            from trainkite import __version__ as v
        print(f"trainkite {v}")
        raise typer.Exit(0)


@app.callback()
def _root(
    _show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Reproducible text-classifier training on Prefect."""


def load_cli_params(path: Path | None, overrides: list[str] | None):
    """`load_params`, but a key that came from `--set` is reported as coming from --set, not the file."""
    from pydantic import ValidationError

    from params import apply_overrides, load_params, parse_overrides
    from params.model import DEFAULT_PARAMS_FILE, Params, ParamsError, _format_validation_error, read_params_file

    if not overrides:
        return load_params(path, [])
    source_file = Path(path) if path else DEFAULT_PARAMS_FILE
    ov = parse_overrides(overrides)
    data = apply_overrides(read_params_file(source_file), ov)
    try:
        return Params.model_validate(data)
    except ValidationError as e:
        from_set = sorted({".".join(str(p) for p in x["loc"][:2]) for x in e.errors()} & set(ov))
        source = f"--set {', '.join(from_set)} (over {source_file})" if from_set else str(source_file)
        raise ParamsError(_format_validation_error(e, source)) from None


def require_model_type(params) -> None:
    """A model type whose extra is not installed is refused here, before a server starts or a file is
    written (the flow would only find out in its preprocess step, after fetching and staging data)."""
    if params.model.type == "encoder":
        from models.encoder import require

        require()


def emit(obj: dict, as_json: bool, human: callable | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()
    elif human:
        human()


def print_table(table, whole: tuple[str, ...] = ("model ID",)) -> None:
    """Print a rich table on stdout without cutting a cell: rich would shrink it to the terminal (80 columns
    when piped) and cut IDs a user pastes back. The table gets its natural width when the terminal is
    narrower (the terminal wraps the line; the text stays whole), and the named columns never wrap."""
    for col in table.columns:
        if col.header in whole:
            col.no_wrap = True
            col.min_width = max([len(str(col.header)), *(len(str(c)) for c in col.cells)])
    console = Console()
    natural = console.measure(table, options=console.options.update(max_width=1000)).maximum
    if natural > console.width:
        console = Console(width=natural)
    console.print(table)


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
    """Drives the run's one live display: a bar per training run from the fit loop's progress records; the
    epoch lines, early stopping and each finished step printed above it (via `_TerminalView`)."""

    def __init__(self, progress):
        super().__init__()
        self.progress = progress
        self.task = None
        self.started = time.monotonic()

    def emit(self, record: logging.LogRecord) -> None:
        info = getattr(record, "trainkite_progress", None)
        if not info:
            return
        total = info["epochs"] * info["steps"]
        done = (info["epoch"] - 1) * info["steps"] + info["step"]
        if self.task is None:
            self.task = self.progress.add_task("train", total=total)
        self.progress.update(
            self.task,
            completed=done,
            total=total,
            description=f"{info.get('phase', 'train')}  epoch {info['epoch']}/{info['epochs']}",
        )

    def line(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def step_finished(self, step: str, state: str) -> None:
        if step == "train" and self.task is not None:
            self.progress.remove_task(self.task)  # no bar left at "epoch 11/15" after early stopping
            self.task = None
        mark = "done" if state.startswith("Completed") else state
        self.line(f"  {step:<12} {mark}   ({time.monotonic() - self.started:.1f} s)")


_TASK_FINISHED = re.compile(r"^Finished in state (\w+)")


class _TerminalView(logging.Filter):
    """On Prefect's console handlers while a run shows its live display: INFO lines of Prefect and of the
    steps are not printed as log lines (they all still reach the Prefect UI through the API handler);
    epoch lines, early stopping and finished steps are shown as lines of the display. Warnings and errors
    pass as they are. `--verbose` does not install it."""

    def __init__(self, view: _ProgressHandler):
        super().__init__()
        self.view = view

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        msg = record.getMessage()
        if record.name.startswith("trainkite.train") and (
            msg.startswith("epoch ") or "early stopping" in msg or msg.startswith("resuming ")
        ):
            self.view.line(f"  {msg}")
        elif record.name == "prefect.task_runs" and (m := _TASK_FINISHED.match(msg)):
            name = getattr(record, "task_name", None) or (getattr(record, "task_run_name", "") or "").rsplit("-", 1)[0]
            self.view.step_finished(name or "step", m.group(1))
        elif record.name == "prefect.flow_runs" and msg.startswith("View at "):
            self.view.line(f"  Prefect UI   {msg.removeprefix('View at ')}")
        return False


def _console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    return list({id(h): h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}.values())


def _store(root: str | None):
    from trainkite.store import open_store

    return open_store(root)


@app.command()
def train(
    params_file: Annotated[
        Path | None, typer.Option("--params", help="Params file (default params/sentiment.toml).")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="section.key=value, repeatable.")] = None,
    model_id: Annotated[str | None, typer.Option("--model-id", help="Resume/name this model ID.")] = None,
    params_json: Annotated[
        str | None,
        typer.Option("--params-json", help="Resolved params as JSON (what a Batch job receives); replaces --params."),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Print Prefect's and the steps' log lines here too, not only in the Prefect UI."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a model on the data the params file points at (local DuckDB by default)."""
    with user_errors(as_json):
        from params import apply_overrides, parse_overrides, validate_params

        if params_json is not None:
            try:
                raw = json.loads(params_json)
            except ValueError as e:
                raise UserInputError(f"--params-json is not valid JSON: {e}") from None
            params = validate_params(apply_overrides(raw, parse_overrides(overrides or [])), source="--params-json")
        else:
            params = load_cli_params(params_file, overrides)
        require_model_type(params)
        configure_quiet_offline_env()
        from trainkite.ids import resolve_model_id
        from cli.prefect_server import begin_api, ensure_api

        begin_api()  # the server comes up while the flow's imports (Prefect, torch) load
        from flows.train import train as train_flow  # noqa: F401  (imported here for the overlap)

        ensure_api()
        from buildkite.context import BuildContext

        build = BuildContext.from_env()
        _check_tree(build)
        mid = resolve_model_id(model_id, build)
        try:
            result = _run_train(params, mid, build, as_json, verbose)
        except KeyboardInterrupt:
            # The model ID is what a resume needs; the finished steps and the last checkpoint are kept.
            resume = _resume_command(params_file, overrides, params_json, mid)
            if as_json:
                emit({"error": "interrupted", "model_id": mid, "resume": resume, "exit_code": 130}, True)
            err.print(
                f"[yellow]interrupted:[/] model {mid} is not finished; resume it (finished steps are "
                f"reused, training restarts from its last checkpoint) with:\n  {resume}",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(130) from None
        sample = None
        if not as_json:
            from models.predictor import Predictor

            text = "The pay is fair but management ignores our workload."
            sample = Predictor.from_store(_store(params.artifacts.root), mid).predict([text])[0]
            sample["text"] = text

        def human():
            err.print(f"[bold green]model[/] {result['model_id']}")
            err.print(f"artifacts  {result['artifact_uri']}")
            for k, v in result["metrics"].items():
                err.print(f"  {k:<22} {v:.4f}")
            if sample:
                err.print(f"sample prediction: {json.dumps(sample, ensure_ascii=False)}")
            print(result["model_id"])

        emit(result, as_json, human)


def _resume_command(
    params_file: Path | None, overrides: list[str] | None, params_json: str | None, model_id: str
) -> str:
    import shlex

    args = ["trainkite", "train"]
    if params_json is not None:
        args += ["--params-json", params_json]
    elif params_file is not None:
        args += ["--params", str(params_file)]
    for o in overrides or []:
        args += ["--set", o]
    return shlex.join([*args, "--model-id", model_id])


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
    traceback (an empty query result used to print ~70 lines of it)."""

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


def _run_train(params, model_id: str, build, as_json: bool, verbose: bool = False) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.train import train as train_flow

    hide_user_error_tracebacks()

    progress_logger = logging.getLogger("trainkite_progress")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=as_json or not err.is_terminal,
    ) as progress:
        handler = _ProgressHandler(progress)
        progress_logger.addHandler(handler)
        progress_logger.setLevel(logging.INFO)
        from cli.prefect_server import local_flow_run

        view = None if verbose or as_json else _TerminalView(handler)
        consoles = _console_handlers() if view else []
        for h in consoles:
            h.addFilter(view)
        if view:
            handler.line(f"training {model_id}  (every log line is in the Prefect UI; --verbose prints them here)")
        try:
            with contextlib.redirect_stdout(sys.stderr), local_flow_run(train_flow) as run_flow:
                return run_flow(params=params, model_id=model_id, build=build)
        except Exception as e:
            if _api_gone(e):
                raise TrainkiteError(
                    f"the Prefect API at {os.environ.get('PREFECT_API_URL')} went away during the "
                    f"run ({type(e).__name__}: {str(e)[:200]}); was `trainkite server stop` run? "
                    "A published model is kept; re-run with the same --model-id to finish"
                ) from None
            raise
        finally:
            progress_logger.removeHandler(handler)
            for h in consoles:
                h.removeFilter(view)


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
        from cli import predict as cli_predict

        if output_csv:
            cli_predict.check_output(output_csv)  # before the model loads and any row is scored
        from trainkite.manifest import fetch_model

        # Found and verified before torch loads (seconds): a bad or unknown ID is refused at once.
        folder, manifest = fetch_model(_store(root), model_id)
        from models.predictor import Predictor

        predictor = Predictor(folder, manifest)
        if text:
            scored = predictor.predict(text)
            cli_predict.check_finite_predictions(scored, predictor.model_id)
            preds = [{"text": t, **p} for t, p in zip(text, scored, strict=True)]
            emit(
                {"model_id": predictor.model_id, "predictions": preds},
                as_json,
                lambda: [print(json.dumps(p, ensure_ascii=False)) for p in preds],
            )
            return
        done = cli_predict.score_csv(
            predictor, input_csv, output_csv, text_column, None if as_json else cli_predict.progress_printer()
        )
        emit(
            {
                "model_id": predictor.model_id,
                "rows": done["rows"],
                "output": str(output_csv),
                "columns": done["columns"],
            },
            as_json,
            lambda: err.print(f"wrote {done['rows']} predictions to {output_csv}"),
        )


@app.command()
def models(root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """List published models with their metrics."""
    with user_errors(as_json):
        from trainkite.manifest import list_models_report

        store = _store(root)
        ms, broken = list_models_report(store)  # a broken folder is reported, not fatal to the listing
        rows = [
            {
                "model_id": m["model_id"],
                "model_name": m["model_name"],
                "created_at": m["created_at"],
                "metrics": m.get("metrics", {}),
                "uri": store.uri(f"{m['model_name']}/{m['model_id']}"),
            }
            for m in ms
        ]

        def human():
            from rich.table import Table

            t = Table("model ID", "name", "created", "eval acc", "eval macro-F1", "test acc")
            for r in rows:
                m = r["metrics"]
                t.add_row(
                    r["model_id"],
                    r["model_name"],
                    r["created_at"],
                    *(
                        f"{m[k]:.4f}" if k in m else "-"
                        for k in ("evaluation_accuracy", "evaluation_macro_f1", "test_accuracy")
                    ),
                )
            print_table(t)

        for b in broken:  # on stderr in both modes: --json has them under "broken" too
            err.print(f"[yellow]skipped[/] {escape(b['model'])}: {escape(b['error'])}", highlight=False, soft_wrap=True)
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
        from cli.prefect_server import start

        s = start(quiet=as_json)
        emit(
            s,
            as_json,
            lambda: err.print(
                f"Prefect server at {s['url'][:-4]} (pid {s['pid']}); stop it with `trainkite server stop`"
            ),
        )


@server_app.command("prepare")
def server_prepare(as_json: JsonOpt = False) -> None:
    """Migrate an empty Prefect database once per Prefect version, so a new TRAINKITE_HOME starts fast."""
    with user_errors(as_json):
        from cli.prefect_server import prepare_database

        path = prepare_database()
        # The path is the command's result: on stdout, so `server prepare >/dev/null` is silent.
        emit({"template": str(path)}, as_json, lambda: print(path))


@server_app.command("stop")
def server_stop(
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Stop even while flow runs are active: local runs are interrupted first (as Ctrl-C), "
            "the rest marked Crashed.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Stop the local Prefect server (refused while flow runs are active, unless --force)."""
    with user_errors(as_json):
        from cli.prefect_server import stop

        stopped = stop(force=force)
        emit({"stopped": stopped}, as_json, lambda: err.print("stopped" if stopped else "not running"))


@server_app.command("status")
def server_status(as_json: JsonOpt = False) -> None:
    """Is the local Prefect server running?"""
    from cli.prefect_server import reap_orphans, status

    s = status() or {"running": False}
    if s.get("healthy"):
        with contextlib.suppress(Exception):  # a status that cannot reap still reports
            s["reaped"] = [r["name"] for r in reap_orphans(s["url"])]
    s.setdefault("running", True)
    emit(s, as_json, lambda: err.print(json.dumps(s)))


# Command groups that live next to what they drive; each module has `register(app)`.
_EXTENSIONS = (
    "cli.serving_commands",
    "cli.buildkite_commands",
    "cli.deployments_commands",
    "cli.repro_commands",
    "cli.sweep_commands",
    "cli.evidence_commands",
    "cli.local_commands",
    "cli.gc_commands",
)


def _register_extensions() -> None:
    import importlib

    for name in _EXTENSIONS:
        importlib.import_module(name).register(app)


_register_extensions()


def main() -> None:
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "trainkite")
    app()


if __name__ == "__main__":
    main()
