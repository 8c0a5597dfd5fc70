"""Orchestration overhead: the train flow against a Prefect server vs the same steps as plain functions.

    .venv/bin/python benchmarks/orchestration_overhead.py [--repeats 3]

Runs, on the bundled demo data with tracking off: (1) the plain step functions, (2) the flow
in a fresh process against an already running local server (warm), (3) the flow in a fresh
process that has to start the local server first (first run), (4) the same in a brand-new
TRAINKITE_HOME (first run ever: Prefect's database migrations too). Each process is timed from
spawn to exit (what a user waits for), and inside from after the imports. Prints one JSON object.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OV = ["tracking.backend='none'"]

PLAIN = """
import sys, time, shutil
from pathlib import Path
t0 = time.perf_counter()
from params import load_params
from tasks import data, provenance, evaluate as ev, publish as pb
from models import bow, features as pp
from trainkite.store import open_store
from trainkite.manifest import ModelRef
from trainkite.run import Run
params = load_params(None, sys.argv[2:])
store = open_store(params.artifacts.root); mid = sys.argv[1]; work = Path(params.artifacts.root) / "_work"
t1 = time.perf_counter()
provenance.check_code_commit(None)
ds = data.fetch_dataset(params, work, store, f"sentiment/{mid}")
f = pp.preprocess(ds, params.preprocess, store, work)
tr = bow.train_bow(f, params, store, ModelRef("sentiment", mid), work)
r = ev.evaluate(tr, f, params, store, work, f"sentiment/{mid}")
pb.publish_model(run=Run(params.model.name, mid, str(store.root)), params=params, dataset=ds, trained=tr, report=r)
print(time.perf_counter() - t1, t1 - t0)
"""

FLOW = """
import sys, time
t0 = time.perf_counter()
from params import load_params
from trainkite.home import configure_quiet_offline_env
configure_quiet_offline_env()
params = load_params(None, sys.argv[2:])
from cli.prefect_server import begin_api, ensure_api
begin_api()  # as `trainkite train` does: the server comes up while Prefect and torch import
from flows.train import train
t1 = time.perf_counter()
ensure_api()
train(params=params, model_id=sys.argv[1])
print(time.perf_counter() - t1, t1 - t0)
"""


def _run(code: str, model_id: str, env: dict) -> tuple[float, float, float]:
    # A fresh artifact store per run: no variant profits from another's preprocessing cache.
    root = Path(env["TRAINKITE_HOME"]) / "stores" / model_id
    ov = [*OV, f"artifacts.root={json.dumps(str(root))}"]
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code, model_id, *ov], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    process_s = time.perf_counter() - started
    run_s, import_s = map(float, out.stdout.strip().splitlines()[-1].split())
    return run_s, import_s, process_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    env = {**os.environ, "TRAINKITE_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    res: dict[str, list] = {"plain": [], "flow_warm": [], "flow_first": [], "flow_first_new_home": []}

    def stop(e: dict) -> None:
        subprocess.run([sys.executable, "-m", "cli", "server", "stop"], env=e, capture_output=True, check=False)

    homes = [home]
    try:
        for i in range(args.repeats):
            res["plain"].append(_run(PLAIN, f"plain-{i}", env))
            stop(env)
            res["flow_first"].append(_run(FLOW, f"first-{i}", env))
            res["flow_warm"].append(_run(FLOW, f"warm-{i}", env))
            homes.append(Path(tempfile.mkdtemp(prefix="bench-overhead-new-")))
            new_env = {**env, "TRAINKITE_HOME": str(homes[-1])}
            try:
                res["flow_first_new_home"].append(_run(FLOW, f"new-{i}", new_env))
            finally:
                stop(new_env)
    finally:
        stop(env)
        for h in homes:  # each holds a Prefect database, stores and runs: not worth keeping
            shutil.rmtree(h, ignore_errors=True)

    def median(k: str, col: int) -> float:
        return round(statistics.median(r[col] for r in res[k]), 2)

    print(
        json.dumps(
            {
                "median_run_s": {k: median(k, 0) for k in res},
                "median_import_s": {k: median(k, 1) for k in res},
                "median_process_s": {k: median(k, 2) for k in res},
                "overhead_s": {
                    k: {
                        "after_imports": round(median(k, 0) - median("plain", 0), 2),
                        "process": round(median(k, 2) - median("plain", 2), 2),
                    }
                    for k in res
                    if k != "plain"
                },
                "raw": res,
                "cpus": os.cpu_count(),
                "loadavg_end": os.getloadavg(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
