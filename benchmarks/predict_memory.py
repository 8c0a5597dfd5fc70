"""Peak memory of `trainkite predict --input/--output` against the number of input rows (streamed input).

    .venv/bin/python benchmarks/predict_memory.py --root STORE --model-id ID [--rows 20000 200000]

Writes a CSV of the given size per run (short review-like texts), scores it with the CLI as a subprocess
and reports the child's peak RSS (ru_maxrss from wait4) and wall time. Temp files are removed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(root: str, model_id: str, rows: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="predict-mem-") as tmp:
        src, dst = Path(tmp) / "in.csv", Path(tmp) / "out.csv"
        with open(src, "w") as f:
            f.write("id,text,label\n")
            for i in range(rows):
                f.write(f'{i},"review {i}: the pay is fair, the team is kind, the hours are long",positive\n')
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "predict",
                model_id,
                "--root",
                root,
                "--input",
                str(src),
                "--output",
                str(dst),
                "--json",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if status != 0:
            raise SystemExit(f"predict failed ({status}): {out[-500:]!r}")
        return {"rows": rows, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    a = ap.parse_args()
    for n in a.rows:
        print(run(a.root, a.model_id, n), flush=True)


if __name__ == "__main__":
    main()
