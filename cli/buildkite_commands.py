"""`trainkite launch`: the first step of buildkite/pipeline.yml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deployments.specs import TRAIN_DEPLOYMENT
from cli.main import JsonOpt, emit, err, user_errors


def launch(
    params_file: Annotated[
        Path | None,
        typer.Option(
            "--params",
            envvar="TRAINKITE_PARAMS",
            help="Params file (default params/sentiment.toml; env TRAINKITE_PARAMS).",
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="section.key=value, repeatable; applied after the lines of env TRAINKITE_SET."),
    ] = None,
    deployment: Annotated[
        str,
        typer.Option(
            "--deployment",
            envvar="TRAINKITE_DEPLOYMENT",
            help="Prefect deployment to run (flow/deployment), e.g. train/train-ecs-gpu.",
        ),
    ] = TRAIN_DEPLOYMENT,
    as_json: JsonOpt = False,
) -> None:
    """Start training for this Buildkite build as a Prefect deployment run and print the flow run ID.

    Inside a build: refuses a dirty checkout, uses model ID <pipeline>-<build number>, and a retry
    returns the same flow run. The build then waits at its `training_finished` block step.
    """
    with user_errors(as_json):
        from cli.launch import launch_from_env

        result = launch_from_env(params_file, overrides or [], deployment)

        def human():
            err.print(
                f"started flow run [bold]{result['flow_run_name']}[/] ({result['state']}) of "
                f"{result['deployment']}" + (f" for model {result['model_id']}" if result["model_id"] else "")
            )
            if result["url"]:
                err.print(result["url"], highlight=False)
            print(result["flow_run_id"])

        emit(result, as_json, human)


def register(app: typer.Typer) -> None:
    app.command("launch")(launch)
