"""Orchestration overhead: the train flow against a Prefect server vs the same steps as plain functions.

    .venv/bin/python benchmarks/orchestration_overhead.py [--repeats 3]

Runs, on the bundled demo data with tracking off: (1) the plain step functions, (2) the flow
in a fresh process against an already running local server (warm), (3) the flow in a fresh
process that has to start the local server first (first run). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OV = ["tracking.backend='none'"]

PLAIN = """
import sys, time, shutil
from pathlib import Path
t0 = time.perf_counter()
from params import load_params
from tasks import data, preprocess as pp, train as tn, evaluate as ev, publish as pb
from trainkite.store import open_store
from trainkite.manifest import ModelRef
params = load_params(None, sys.argv[2:])
store = open_store(params.artifacts.root); mid = sys.argv[1]; work = Path(params.artifacts.root) / "_work"
t1 = time.perf_counter()
ds = data.fetch_dataset(params, work, store, f"sentiment/{mid}")
f = pp.preprocess(ds, params.preprocess, store, work)
tr = tn.train_model(f, params, store, ModelRef("sentiment", mid), work)
r = ev.evaluate(tr, f, params, store, work, f"sentiment/{mid}")
pb.publish_model(params=params, model_id=mid, dataset=ds, trained=tr, report=r, store=store, workdir=work)
print(time.perf_counter() - t1, t1 - t0)
"""

FLOW = """
import sys, time
t0 = time.perf_counter()
from params import load_params
from trainkite.home import configure_quiet_offline_env
configure_quiet_offline_env()
from trainkite.prefect_server import ensure_api
from flows.train import train
params = load_params(None, sys.argv[2:])
t1 = time.perf_counter()
ensure_api()
train(params=params, model_id=sys.argv[1])
print(time.perf_counter() - t1, t1 - t0)
"""


def _run(code: str, model_id: str, env: dict) -> tuple[float, float]:
    # A fresh artifact store per run: no variant profits from another's preprocessing cache.
    root = Path(env["TRAINKITE_HOME"]) / "stores" / model_id
    ov = [*OV, f"artifacts.root={json.dumps(str(root))}"]
    out = subprocess.run([sys.executable, "-c", code, model_id, *ov], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True)
    run_s, import_s = map(float, out.stdout.strip().splitlines()[-1].split())
    return run_s, import_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    env = {**os.environ, "TRAINKITE_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    res: dict[str, list] = {"plain": [], "flow_warm": [], "flow_first": []}
    for i in range(args.repeats):
        res["plain"].append(_run(PLAIN, f"plain-{i}", env))
        subprocess.run([sys.executable, "-m", "trainkite", "server", "stop"], env=env, capture_output=True,
                       check=False)
        res["flow_first"].append(_run(FLOW, f"first-{i}", env))
        res["flow_warm"].append(_run(FLOW, f"warm-{i}", env))
    subprocess.run([sys.executable, "-m", "trainkite", "server", "stop"], env=env, capture_output=True, check=False)
    med = {k: round(statistics.median(r for r, _ in v), 2) for k, v in res.items()}
    imports = {k: round(statistics.median(i for _, i in v), 2) for k, v in res.items()}
    print(json.dumps({
        "median_run_s": med, "median_import_s": imports,
        "overhead_warm_s": round(med["flow_warm"] - med["plain"], 2),
        "overhead_first_s": round(med["flow_first"] - med["plain"], 2),
        "raw": res, "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
