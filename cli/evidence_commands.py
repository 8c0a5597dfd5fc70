"""`trainkite alias set champion MODEL_ID`, `trainkite models --aliases`, and `trainkite review` (the
review step of buildkite/pipeline.yml: champion against challenger, for the people who press Deploy?)."""

from __future__ import annotations

import functools
import inspect
from typing import Annotated

import typer

from cli.main import JsonOpt, RootOpt, emit, err, user_errors

alias_app = typer.Typer(no_args_is_help=True, help="Model aliases (champion per model name and deploy target).")

TargetOpt = Annotated[str, typer.Option("--target", help="Deploy target the alias is for: sagemaker or local.")]


def _store(root: str | None):
    from trainkite.store import open_store

    return open_store(root)


@alias_app.command("set")
def alias_set(
    alias: Annotated[str, typer.Argument(help="The alias: champion.")],
    model_id: Annotated[str, typer.Argument(help="Model ID (see `trainkite models`).")],
    target: TargetOpt = "sagemaker",
    by: Annotated[
        str | None, typer.Option("--by", help="Who sets it (default: the Buildkite unblocker, else your user name).")
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, kept with the record.")] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Name MODEL_ID the champion of its model name on TARGET (recorded with who and when)."""
    with user_errors(as_json):
        from tasks import aliases

        record = aliases.set_alias(
            _store(root), alias, model_id, target=target, set_by=by or aliases.who(), reason=reason
        )
        emit(
            record,
            as_json,
            lambda: err.print(
                f"{record['alias']} of {record['model_name']} on {record['target']}: {record['model_id']} "
                f"(set by {record['set_by']} at {record['time']})",
                highlight=False,
            ),
        )


@alias_app.command("list")
def alias_list(root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """The champion of every model name and deploy target, and where that comes from."""
    _print_aliases(root, as_json)


def _print_aliases(root: str | None, as_json: bool) -> None:
    with user_errors(as_json):
        from tasks import aliases

        store = _store(root)
        rows = aliases.all_champions(store)

        def human():
            from rich.console import Console
            from rich.table import Table

            t = Table("model name", "target", "alias", "model ID", "since", "set by", "from")
            for r in rows:
                t.add_row(
                    r["model_name"],
                    r["target"],
                    r["alias"],
                    r["model_id"],
                    r["since"] or "-",
                    r["set_by"] or "-",
                    r["source"],
                )
            # Full IDs whatever the terminal width: they are pasted into other commands.
            Console(width=max(160, Console().width)).print(t)

        emit({"root": store.root, "aliases": rows}, as_json, human)


def _with_aliases_option(models):
    """`trainkite models` plus `--aliases`, whatever options the models command has."""

    @functools.wraps(models)
    def wrapper(*args, aliases: bool = False, **kwargs):
        if aliases:
            return _print_aliases(kwargs.get("root"), kwargs.get("as_json", False))
        return models(*args, **kwargs)

    sig = inspect.signature(models, eval_str=True)
    option = inspect.Parameter(
        "aliases",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool, typer.Option("--aliases", help="List the champion of each model name and deploy target instead.")
        ],
    )
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values()]
    wrapper.__signature__ = sig.replace(parameters=[*params, option])
    wrapper.__annotations__ = {**{p.name: p.annotation for p in params}, "aliases": option.annotation}
    del wrapper.__wrapped__  # typer must read the new signature, not the wrapped one's
    return wrapper


def review(
    strict: Annotated[
        bool,
        typer.Option(
            help="Fail (exit 1) when the challenger is significantly worse and TRAINKITE_ALLOW_WORSE is not 1."
        ),
    ] = True,
) -> None:
    """The review step of buildkite/pipeline.yml: annotate the build with champion against challenger,
    upload both confusion matrices as build artifacts, and fail a significantly worse challenger."""
    from cli.review import run_review

    with user_errors(False):
        code = run_review(strict=strict)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.add_typer(alias_app, name="alias")
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else None)
        if name == "models" and info.callback is not None:
            info.callback = _with_aliases_option(info.callback)
    app.command("review")(review)
