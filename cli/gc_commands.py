"""`trainkite gc`: remove from the artifact store and $TRAINKITE_HOME what no model needs."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.main import JsonOpt, RootOpt, emit, err, user_errors


def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
    unfinished: Annotated[
        bool,
        typer.Option(
            "--unfinished", help="Also the scratch of runs that never published (they can no longer be resumed)."
        ),
    ] = False,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove scratch (checkpoints, staged run files, local run folders) that no published model needs."""
    with user_errors(as_json):
        from trainkite.home import runs_dir
        from trainkite.runfiles import collect, garbage
        from trainkite.store import open_store

        store = open_store(root)
        found = garbage(store, runs_dir(), unfinished=unfinished)
        removed = 0 if dry_run else collect(store, found)
        result = {"root": store.root, "dry_run": dry_run, **found, "objects_removed": removed}

        def human():
            verb = "would remove" if dry_run else "removed"
            for p in found["prefixes"]:
                err.print(f"{verb} {store.uri(p)}", highlight=False)
            for p in found["local"]:
                err.print(f"{verb} {p}", highlight=False)
            if not (found["prefixes"] or found["local"]):
                err.print("nothing to remove")

        emit(result, as_json, human)


def register(app: typer.Typer) -> None:
    app.command("gc")(gc)
