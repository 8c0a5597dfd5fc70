"""release-build: tell a Buildkite build that its training run failed, crashed or was cancelled.

Run by the `trainkite-release-build` automation (deployments/automations.py) from the Prefect
server's side, so it works when the training run's own process is dead (SIGKILL, OOM, lost
host) and its state hooks never ran. Safe to run again for the same flow run.
"""

from __future__ import annotations

from prefect import flow

from flows import release_steps as steps


@flow(name="release-build")
def release_build(flow_run_id: str) -> str:
    """Annotate the build of a failed training run and release its `training_finished` step.

    Args:
        flow_run_id: The training flow run (a UUID, or an event resource ID `prefect.flow-run.<uuid>`).
    """
    run = steps.read_failed_run(flow_run_id)
    return steps.release(run)
