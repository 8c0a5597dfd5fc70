"""`trainkite sweep`: a grid or seeded random search, one train run per configuration, a leaderboard."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.main import JsonOpt, emit, err, user_errors
from trainkite.errors import TrainkiteError


def sweep(
    params_file: Annotated[
        Path | None, typer.Option("--params", help="Base params file (default params/sentiment.toml).")
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid", help="section.key=v1,v2 (values read like --set), repeatable; the sweep runs every combination."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="section.key=value for every configuration, repeatable.")
    ] = None,
    random: Annotated[
        int | None,
        typer.Option(
            "--random", min=1, help="Run N distinct configurations drawn from the grid instead of all of them."
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --random.")] = 0,
    max_parallel: Annotated[
        int, typer.Option("--max-parallel", min=1, max=64, help="Configurations training at the same time.")
    ] = 2,
    deployment: Annotated[
        str | None,
        typer.Option(
            "--deployment", help="Run each configuration on this train deployment (e.g. train/train-ecs-gpu)."
        ),
    ] = None,
    sweep_id: Annotated[
        str | None, typer.Option("--sweep-id", help="Reuse a sweep ID and its model IDs (finished steps are reused).")
    ] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Also write the leaderboard as CSV here.")] = None,
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Print every run's log lines here too, not one line per configuration."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Hyper-parameter sweep: every configuration is its own train run; the best is the sweep's candidate."""
    with user_errors(as_json):
        import tasks.sweep
        from cli.main import load_cli_params, require_model_type

        params = load_cli_params(params_file, overrides)
        require_model_type(params)
        parsed = tasks.sweep.parse_grid(grid or [])
        # Plan here first: a sweep with no valid configuration is refused before any server starts.
        plan = tasks.sweep.plan_sweep(params, parsed, random, seed, max_parallel, sweep_id)
        from trainkite.home import configure_quiet_offline_env

        configure_quiet_offline_env()
        from cli.prefect_server import begin_api, ensure_api, local_flow_run

        begin_api()  # the server comes up while the flow's imports load
        from flows.sweep import sweep as sweep_flow

        ensure_api()
        from trainkite.store import open_store

        from cli.sweep_view import SweepView

        view = contextlib.nullcontext() if verbose or as_json else SweepView(plan)
        with contextlib.redirect_stdout(sys.stderr), view, local_flow_run(sweep_flow) as run_flow:
            state = run_flow(
                params=params,
                grid=parsed,
                random=random,
                seed=seed,
                max_parallel=max_parallel,
                deployment=deployment,
                sweep_id=plan.sweep_id,
                return_state=True,
            )
        record = tasks.sweep.read_record(open_store(params.artifacts.root), plan.sweep_id)
        if record is None:
            state.result()  # raises the flow's own error
            raise TrainkiteError(f"sweep {plan.sweep_id} finished without a leaderboard")
        if csv_path:
            tasks.sweep.write_csv(record, csv_path)
        failed = not state.is_completed()
        if failed and as_json:
            record = {**record, "error": state.message, "exit_code": 1}
        emit(record, as_json, lambda: _print_leaderboard(record))
        if failed:
            if not as_json:
                err.print(f"[red]error:[/red] {state.message}", highlight=False)
            raise typer.Exit(1)


def _print_leaderboard(record: dict) -> None:
    from rich.table import Table

    keys = list(record["grid"])
    metric = record["primary_metric"]
    table = Table("rank", "", "config", "status", metric, *keys, "error", title=f"sweep {record['sweep_id']}")
    for r in record["rows"]:
        score = "" if r["score"] is None else f"{r['score']:.4f}"
        error = (r["error"] or "").strip().splitlines()[-1:] or [""]
        table.add_row(
            str(r["rank"]),
            "*" if r["candidate"] else "",
            r["config_id"],
            r["status"],
            score,
            *(str(r["config"].get(k)) for k in keys),
            error[0].strip()[:60],
        )
    err.print(table)
    c = record["candidate"]
    if c:
        err.print(
            f"[bold green]candidate[/] {c['model_id']} ({c['config_id']}: {c['config']}) "
            f"{c['score_key']}={c['score']:.4f}",
            highlight=False,
        )
        print(c["model_id"])
    err.print(f"record  {record.get('record_uri')}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
