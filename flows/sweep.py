"""The sweep: one train run per configuration, preprocessing once per variant, a ranked leaderboard."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from params.model import DEFAULT_PARAMS_FILE, Params, load_params
from flows import sweep_steps as steps


@flow(name="sweep")
def sweep(
    params: Params = load_params(DEFAULT_PARAMS_FILE),
    grid: dict[str, list[Any]] | None = None,
    random: int | None = None,
    seed: int = 0,
    max_parallel: int = 2,
    deployment: str | None = None,
    sweep_id: str | None = None,
) -> dict:
    """Train one model per configuration and mark the best as the sweep's candidate.

    Args:
        params: Base parameters every configuration starts from.
        grid: Values to try per key, e.g. {"train.learning_rate": [0.2, 0.5], "preprocess.ngram_max": [1, 2]}.
        random: Sample this many distinct configurations of the grid instead of running all of them.
        seed: Seed of the random sample.
        max_parallel: Configurations training at the same time.
        deployment: Run each configuration as a run of this train deployment (e.g. the GPU one) instead of a
            local subflow.
        sweep_id: Reuse a sweep ID (and so its model IDs); empty = a new one.
    """
    plan = steps.plan_sweep(params, grid or {}, random, seed, max_parallel, sweep_id)
    limit = steps.open_limit(plan.sweep_id, max_parallel) if deployment else None
    outcomes = []
    # waves[0] holds one configuration per preprocessing variant; the rest then find their features cached.
    for wave in plan.waves:
        # Deployment runs wait on the server-side limit (adjustable in the UI), not on local threads.
        with ThreadPoolTaskRunner(max_workers=len(wave) if deployment else max_parallel) as runner:
            futures = [
                runner.submit(
                    steps.run_config,
                    {"config": plan.config(i), "sweep_id": plan.sweep_id, "deployment": deployment, "limit": limit},
                )
                for i in wave
            ]
            outcomes += [f.result() for f in futures]
    if limit:
        steps.close_limit(limit)
    record = steps.record_sweep(plan, outcomes, deployment)
    steps.require_candidate(record)
    return record
