"""What W&B tracking (offline) costs a demo training run: the train flow with `tracking.backend = "wandb"`
against the same flow with tracking off, each in a fresh process (a fresh `import wandb`, as for
`trainkite train`), against one already running local Prefect server.

    flock /tmp/trainkite-bench.lock .venv/bin/python benchmarks/tracking_overhead.py [--repeats 3] [--code DIR]

`--code DIR` runs another copy of the code (e.g. `git archive <commit> | tar -x -C DIR`) for a before/after.
Per run it reads back from the Prefect API the `track` task's duration, and times the flow from its call to
its return (imports excluded: both variants pay the same ones, except wandb's own, which is the point). The
cost of tracking = median flow time with W&B - median flow time without. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FLOW = """
import sys, time
from params import load_params
from trainkite.home import configure_quiet_offline_env
configure_quiet_offline_env()
params = load_params(None, sys.argv[2:])
from cli.prefect_server import begin_api, ensure_api
begin_api()
from flows.train import train
ensure_api()
try:  # as `trainkite train` runs it, where the code has it
    from cli.prefect_server import local_flow_run
except ImportError:
    import contextlib
    local_flow_run = contextlib.contextmanager(lambda flow: (yield flow))
t0 = time.perf_counter()
with local_flow_run(train) as run_flow:
    state = run_flow(params=params, model_id=sys.argv[1], return_state=True)
flow_s = time.perf_counter() - t0
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
with get_client(sync_client=True) as c:
    runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
tasks = {r.name.rsplit("-", 1)[0]: r.total_run_time.total_seconds() for r in runs}
print(flow_s, tasks.get("track", 0.0))
"""


def _run(code_dir: Path, model_id: str, backend: str, env: dict) -> tuple[float, float]:
    root = Path(env["TRAINKITE_HOME"]) / "stores" / model_id  # a fresh store: no run reuses another's cache
    ov = [f"tracking.backend={json.dumps(backend)}", f"artifacts.root={json.dumps(str(root))}"]
    run_env = {**env, "PYTHONPATH": str(code_dir)}
    out = subprocess.run(
        [sys.executable, "-c", FLOW, model_id, *ov],
        cwd=code_dir,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    flow_s, track_s = map(float, out.stdout.strip().splitlines()[-1].split())
    return flow_s, track_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--code", type=Path, default=REPO, help="the code to run (default: this checkout)")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    env = {**os.environ, "TRAINKITE_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    res: dict[str, list] = {"none": [], "wandb": []}
    try:
        _run(args.code, "warmup", "none", env)  # starts the server; not counted
        for i in range(args.repeats):
            for backend in ("none", "wandb"):
                res[backend].append(_run(args.code, f"{backend}-{i}", backend, env))
    finally:
        subprocess.run(
            [sys.executable, "-m", "cli", "server", "stop"], env=env, capture_output=True, check=False, timeout=120
        )
        shutil.rmtree(home, ignore_errors=True)

    def median(k: str, col: int) -> float:
        return round(statistics.median(r[col] for r in res[k]), 2)

    print(
        json.dumps(
            {
                "code": str(args.code),
                "median_flow_s": {k: median(k, 0) for k in res},
                "median_track_task_s": median("wandb", 1),
                "tracking_cost_s": round(median("wandb", 0) - median("none", 0), 2),
                "raw": res,
                "cpus": os.cpu_count(),
                "loadavg_end": os.getloadavg(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
