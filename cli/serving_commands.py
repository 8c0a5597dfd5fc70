"""`trainkite serve`, `trainkite deploy` and `trainkite deployments list`."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from cli.main import JsonOpt, RootOpt, emit, err, print_table, user_errors
from trainkite.errors import TrainkiteError
from trainkite.home import configure_quiet_offline_env

deployments_app = typer.Typer(no_args_is_help=True, help="The deployment log: which model is live where.")

PortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")]


def _serve_command(model_id: str, port: int, root: str | None) -> str:
    root_arg = f" --root {root}" if root else ""
    return f"trainkite serve {model_id} --port {port}{root_arg}"


def serve(
    model_id: Annotated[str, typer.Argument(help="Model ID (see `trainkite models`).")],
    port: PortOpt = 8080,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="uvicorn worker processes.")] = 1,
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0 for other machines).")] = "127.0.0.1",
    root: RootOpt = None,
) -> None:
    """Serve a model over HTTP locally: the same app and contract as the SageMaker container."""
    with user_errors(False):
        from trainkite.manifest import fetch_model
        from trainkite.store import open_store

        # Fetch and verify here, so a missing or tampered model is one clear error, not a server that never
        # becomes healthy; every worker verifies again when it loads.
        folder, manifest = fetch_model(open_store(root), model_id)
    _run(folder, model_id, host, port, workers)


def check_port_free(host: str, port: int) -> None:
    """Refuse a port something already listens on before saying "serving at" (uvicorn would find out only
    after the banner, and end in its own error). Bound the way uvicorn binds, then released at once."""
    import socket

    from trainkite.errors import UserInputError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise UserInputError(
                f"cannot serve on {host}:{port}: {e.strerror or e} (something else is listening "
                "there? choose another --port)"
            ) from None


def _run(folder: Path, model_id: str, host: str, port: int, workers: int) -> None:
    from serving.entrypoint import run_server

    with user_errors(False):
        check_port_free(host, port)
    err.print(
        f"serving {model_id} at http://{host}:{port} (GET /ping, POST /invocations); Ctrl+C stops it", highlight=False
    )
    run_server(folder, host=host, port=port, workers=workers, expected_model_id=model_id)


def _preflight(params, model_id: str, target: str, port: int, allow_older: bool) -> None:
    """The flow's guards, run before any Prefect server is started, so a refusal is immediate and clean.

    Imports nothing that imports prefect: Prefect reads PREFECT_API_URL once, and ensure_api() sets it later.
    """
    from tasks import deploy_log
    import tasks.deploy
    from trainkite.store import open_store

    store = open_store(params.artifacts.root)
    candidate = tasks.deploy.load_candidate(store, model_id)
    endpoint = tasks.deploy.target_endpoint(target, params.deploy.endpoint_name, candidate.model_name, port)
    tasks.deploy.check_not_older(candidate, deploy_log.live(deploy_log.read_log(store), target, endpoint), allow_older)
    if target == "sagemaker":
        tasks.deploy.production_store(params.deploy.production_root)
        tasks.deploy.docker_image(candidate, params.deploy.image)
        if not params.deploy.execution_role_arn:
            from trainkite.errors import UserInputError

            raise UserInputError("deploy.execution_role_arn is not set (--set deploy.execution_role_arn=arn:...)")


def deploy(
    model_id: Annotated[str, typer.Argument(help="Model ID (see `trainkite models`).")],
    target: Annotated[Literal["local", "sagemaker"], typer.Option("--target", help="Where to put it live.")] = "local",
    params_file: Annotated[Path | None, typer.Option("--params", help="Params file (deploy.* settings).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", help="section.key=value, repeatable.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Serving image (default: the model's).")] = None,
    allow_older: Annotated[bool, typer.Option("--allow-older", help="Deploy a model older than the live one.")] = False,
    approved_by: Annotated[str | None, typer.Option("--approved-by", help="Who approved it (logged).")] = None,
    port: PortOpt = 8080,
    serve_now: Annotated[
        bool,
        typer.Option("--serve", help="local: serve in the foreground (Ctrl+C stops it) instead of in the background."),
    ] = False,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deploy a verified model to SageMaker or locally, and record it in the deployment log."""
    with user_errors(as_json):
        from cli.main import load_cli_params

        params = load_cli_params(params_file, [*(overrides or []), *_flag_overrides(root, image)])
        _preflight(params, model_id, target, port, allow_older)
        configure_quiet_offline_env()
        from cli.prefect_server import begin_api, ensure_api, local_flow_run

        begin_api()  # the server comes up while the flow's imports load
        from flows.deploy import deploy as deploy_flow

        ensure_api()
        background = target == "local" and not serve_now
        if background:
            from cli import local_commands as cli_local

            # Serving first, recorded second: the log never says "deployed" for a server that did not start.
            served = cli_local.start(model_id, port, params.artifacts.root)
        try:
            with contextlib.redirect_stdout(sys.stderr), local_flow_run(deploy_flow) as run_flow:
                result = run_flow(
                    model_id=model_id,
                    target=target,
                    params=params,
                    approved_by=approved_by,
                    allow_older=allow_older,
                    local_port=port,
                )
            if not result.get("deployed"):
                raise TrainkiteError(f"model {model_id} was not deployed ({result.get('status')})")
        except BaseException:
            if background:
                cli_local.stop_port(port)
            raise
        if target == "local":
            result["serve_command"] = _serve_command(model_id, port, params.artifacts.root)
        if background:
            result["server"] = served

        def human():
            err.print(f"[bold green]deployed[/] {model_id} to {target} {result['endpoint']}", highlight=False)
            if result.get("endpoint_config"):
                err.print(
                    f"endpoint config {result['endpoint_config']} ({result.get('action')}); "
                    f"model data {result.get('model_data_url')}",
                    highlight=False,
                )
            if background:
                err.print(
                    f"serving in the background (pid {served['pid']}, log {served['log']}); stop it with "
                    "`trainkite deployments stop`",
                    highlight=False,
                )
                print(result["endpoint"])

        emit(result, as_json, human)
    if target == "local" and serve_now:
        from trainkite.manifest import fetch_model
        from trainkite.store import open_store

        with user_errors(as_json):
            folder, _ = fetch_model(open_store(params.artifacts.root), model_id)
        _run(folder, model_id, "127.0.0.1", port, 1)


def _flag_overrides(root: str | None, image: str | None) -> list[str]:
    out = []
    if root:
        out.append(f"artifacts.root={json.dumps(root)}")
    if image:
        out.append(f"deploy.image={json.dumps(image)}")
    return out


@deployments_app.command("list")
def deployments_list(
    all_records: Annotated[bool, typer.Option("--all", help="Every attempt, not just what is live.")] = False,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which model is live where (from the deployment log in the artifact store)."""
    with user_errors(as_json):
        from tasks import deploy_log
        from trainkite.store import open_store

        store = open_store(root)
        records = deploy_log.read_log(store)
        from cli.local_commands import check

        # Whether each live entry is really live, asked of the server now (local; SageMaker is not asked).
        live = [{**r, "check": check(r)} for r in deploy_log.live_everywhere(records)]

        def human():
            from rich.console import Console
            from rich.table import Table

            rows = records if all_records else live
            t = Table("target", "endpoint", "model ID", "status", "now", "time", "approved by", "previous")
            for r in rows:
                t.add_row(
                    r["target"],
                    r["endpoint"],
                    r["model_id"],
                    r["status"],
                    r.get("check", "-"),
                    r["time"],
                    r.get("approved_by") or "-",
                    r.get("previous_model_id") or "-",
                )
            if rows:
                print_table(t, whole=("model ID", "previous", "endpoint"))
            else:
                Console().print("no deployments recorded in " + store.root)

        emit({"root": store.root, "live": live, "deployments": records}, as_json, human)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("deploy")(deploy)
    app.add_typer(deployments_app, name="deployments")
