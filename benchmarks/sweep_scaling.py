"""Sweep scaling: 8 configurations (2 preprocessing variants x 4 learning rates) on the demo data.

    .venv/bin/python benchmarks/sweep_scaling.py [--max-parallel 1 2] [--set train.epochs=15 ...]

For each --max-parallel value, in a fresh TRAINKITE_HOME (cold caches): the sweep's wall time, the
sum of its configurations' train-flow-run durations and of their `train` task durations (what the
configurations would cost one after another), and how many preprocess task runs executed versus came
from the cache. Also the same 8 configurations as 8 separate `train` flow calls in a row, the way
a user would run them without a sweep. Needs a Prefect API: PREFECT_API_URL, or trainkite's local
server (started if needed). Prints one JSON object; BENCHMARKS.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

GRID = {"preprocess.ngram_max": [1, 2], "train.learning_rate": [0.2, 0.35, 0.5, 0.8]}
BASE = ["tracking.backend='none'"]


def _runs(flow_run_ids: list[str]) -> tuple[list, dict[str, list]]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        runs = [c.read_flow_run(i) for i in flow_run_ids]
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)), limit=200)
    by_name: dict[str, list] = {}
    for t in tasks:
        by_name.setdefault(t.name.rsplit("-", 1)[0], []).append(t)
    return runs, by_name


def _seconds(run) -> float:
    return (run.end_time - run.start_time).total_seconds()


def _fresh_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    os.environ["TRAINKITE_HOME"] = str(home)
    return home


def params_for(base: dict, overrides: dict):
    from params import load_params

    return load_params(None, {**base, **overrides})


def run_sweep(params, max_parallel: int) -> dict:
    from flows.sweep import sweep

    home = _fresh_home()
    try:
        t0 = time.perf_counter()
        record = sweep(params=params, grid=GRID, max_parallel=max_parallel)
        wall = time.perf_counter() - t0
        ids = [r["flow_run_id"] for r in record["rows"]]
        runs, tasks = _runs(ids)
        states = [t.state.name for t in tasks["preprocess"]]
        return {
            "max_parallel": max_parallel,
            "configurations": len(record["rows"]),
            "completed": record["counts"]["completed"],
            "sweep_wall_s": round(wall, 1),
            "sum_train_flow_runs_s": round(sum(_seconds(r) for r in runs), 1),
            "sum_train_tasks_s": round(sum(_seconds(t) for t in tasks["train"]), 1),
            "preprocess_executed": states.count("Completed"),
            "preprocess_cached": states.count("Cached"),
            "sum_preprocess_executed_s": round(
                sum(_seconds(t) for t in tasks["preprocess"] if t.state.name == "Completed"), 2
            ),
            "candidate": record["candidate"]["config"],
            "best_score": record["candidate"]["score"],
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_one_by_one(base: dict) -> dict:
    from flows.train import train
    from tasks.sweep import combinations

    home = _fresh_home()
    try:
        t0 = time.perf_counter()
        ids = []
        for i, overrides in enumerate(combinations(GRID), start=1):
            state = train(params=params_for(base, overrides), model_id=f"one-by-one-c{i}", return_state=True)
            ids.append(str(state.state_details.flow_run_id))
        wall = time.perf_counter() - t0
        runs, tasks = _runs(ids)
        states = [t.state.name for t in tasks["preprocess"]]
        return {
            "configurations": len(ids),
            "wall_s": round(wall, 1),
            "sum_train_tasks_s": round(sum(_seconds(t) for t in tasks["train"]), 1),
            "preprocess_executed": states.count("Completed"),
            "preprocess_cached": states.count("Cached"),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-parallel", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    ap.add_argument("--skip-one-by-one", action="store_true")
    args = ap.parse_args()

    from trainkite.home import configure_quiet_offline_env
    from cli.prefect_server import ensure_api

    configure_quiet_offline_env()
    ensure_api()
    from params.model import parse_overrides

    base = parse_overrides([*BASE, *args.overrides])
    params = params_for(base, {})
    out = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_avg_before": os.getloadavg(),
        },
        "grid": GRID,
        "base_overrides": [*BASE, *args.overrides],
        "sweeps": [run_sweep(params, k) for k in args.max_parallel],
    }
    if not args.skip_one_by_one:
        out["one_by_one"] = run_one_by_one(base)
    out["machine"]["load_avg_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
