"""`trainkite deployments apply|show`: the project's Prefect work pools, deployments and automations.

`trainkite deployments list` (the deployment log) lives with the deploy code in cli_serving.py.
Both modules share one `deployments` group: whichever registers first creates it, the other
adds its commands to it (two groups of one name would hide each other's commands).
"""

from __future__ import annotations

import typer

from cli.main import JsonOpt, emit, err, user_errors
from trainkite.home import configure_quiet_offline_env

GROUP = "deployments"


def _print_report(report: dict) -> None:
    err.print(f"Prefect API {report['api_url']}" + (" (dry run)" if report["dry_run"] else ""), highlight=False)
    for section in ("pools", "deployments", "automations"):
        err.print(f"[bold]{section}[/]")
        for entry in report[section]:
            detail = entry.get("detail") or ", ".join(entry.get("changed", []))
            err.print(f"  {entry['status']:<13} {entry['name']}" + (f"  ({detail})" if detail else ""), highlight=False)


def apply(
    as_json: JsonOpt = False,
    local_containers: bool = typer.Option(
        False,
        "--local-containers",
        help="Also the local container pool: flow runs in the train image on docker/podman (needs "
        "prefect-docker; see deployments/specs.py)",
    ),
) -> None:
    """Create or update the work pools, deployments and release automations (idempotent)."""
    with user_errors(as_json):
        # Before Prefect loads: apply logs outside any flow run, which Prefect would warn about per line.
        configure_quiet_offline_env()
        from deployments.apply import apply as apply_all
        from cli.prefect_server import ensure_api

        ensure_api()
        report = apply_all(local_containers=local_containers)
        emit(report, as_json, lambda: _print_report(report))


def show(as_json: JsonOpt = False) -> None:
    """Compare the server with deployments/specs.py without changing anything (exit 3: apply would change it)."""
    with user_errors(as_json):
        configure_quiet_offline_env()
        from deployments.apply import apply as apply_all
        from cli.prefect_server import ensure_api

        ensure_api()
        report = apply_all(dry_run=True)
        emit(report, as_json, lambda: _print_report(report))
        if report["changed"]:
            raise typer.Exit(3)


def deployments_group(app: typer.Typer) -> typer.Typer:
    """The app's `deployments` group, created if no other module made it yet."""
    for info in app.registered_groups:
        if info.name == GROUP and info.typer_instance is not None:
            return info.typer_instance
    group = typer.Typer(no_args_is_help=True, help="Prefect deployments of this project, and the deployment log.")
    app.add_typer(group, name=GROUP)
    return group


def register(app: typer.Typer) -> None:
    group = deployments_group(app)
    group.command("apply")(apply)
    group.command("show")(show)
