"""Serving overhead: the container over loopback HTTP vs the same model called in-process, in one run.

    python benchmarks/serving.py                    # trains a model with params/sentiment.toml first
    python benchmarks/serving.py --model-id ID      # a model already in the store (--root ROOT)
    python benchmarks/serving.py --seconds 8 --connections 1,16

Starts `trainkite-container serve` (1 worker, the image's defaults) on a free loopback port with the
model in SM_MODEL_DIR, then for batch 1 and batch 32:
- in-process: `Predictor.predict` plus json.loads/json.dumps (what the server adds per request), one thread;
- HTTP: `wrk` (Debian package `wrk`) with keep-alive connections, else a bounded Python client on one
  connection; server CPU per request from /proc (utime+stime of the server process).
Also: time from process start to the first /ping 200, and server RSS (idle, after load, peak).
Every run is bounded (--seconds per measurement); results go to benchmarks/out/serving.json and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"
CLK = os.sysconf("SC_CLK_TCK")


def texts(n: int) -> list[str]:
    with open(REPO / "data" / "demo" / "comments.csv", newline="") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    return [rows[i % len(rows)] for i in range(n)]


def body(batch: int) -> bytes:
    return json.dumps({"instances": texts(batch)}).encode()


def model_folder(args) -> tuple[Path, str]:
    from trainkite.manifest import fetch_model
    from trainkite.store import open_store

    model_id = args.model_id
    if not model_id:
        env = {**os.environ, "TRAINKITE_HOME": args.home}
        out = subprocess.run(
            [sys.executable, "-m", "cli", "train", "--set", 'tracking.backend="none"', "--json"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
        )
        model_id = json.loads(out.stdout)["model_id"]
        os.environ["TRAINKITE_HOME"] = args.home
    folder, _ = fetch_model(open_store(args.root), model_id)
    return folder, model_id


def in_process(folder: Path, payload: bytes, seconds: float) -> dict:
    import torch

    from models.predictor import Predictor

    torch.set_num_threads(1)  # what the server runs with (TRAINKITE_TORCH_THREADS=1)
    pred = Predictor.from_dir(folder)
    runs = []
    for _ in range(3):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            doc = json.loads(payload)
            json.dumps({"model_id": pred.model_id, "predictions": pred.predict(doc["instances"])}).encode()
            n += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append((n / wall, cpu * 1000 / n))
    return {
        "calls_per_s": statistics.median(r[0] for r in runs),
        "cpu_ms_per_call": statistics.median(r[1] for r in runs),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _tree(pid: int) -> list[int]:
    """The server process and its worker processes (uvicorn forks one per worker)."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(_stat(int(stat.parent.name))[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return pids


def proc_cpu_s(pid: int) -> float:
    """utime+stime of the server and its workers."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            fields = _stat(p)
            total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def proc_mem_mb(pid: int) -> dict:
    """RSS and peak RSS summed over the server and its workers."""
    rss = peak = 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{p}/status").read_text()
            rss += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024
            peak += int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024
    return {"rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}


def start_server(folder: Path, port: int, workers: int) -> tuple[subprocess.Popen, dict]:
    env = {
        **os.environ,
        "SM_MODEL_DIR": str(folder),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "TRAINKITE_SERVE_WORKERS": str(workers),
    }
    exe = Path(sys.executable).parent / "trainkite-container"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(exe), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while time.perf_counter() - t0 < 120:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/ping")
            status = c.getresponse().status
            first = first or time.perf_counter() - t0
            if status == 200:
                return proc, {
                    "start_to_first_answer_s": round(first, 2),
                    "start_to_ping_200_s": round(time.perf_counter() - t0, 2),
                }
        except OSError:
            pass
        time.sleep(0.01)
    proc.kill()
    raise SystemExit("server did not become healthy in 120 s")


WRK_LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{path}", "rb"); wrk.body = f:read("*a"); f:close()
"""


def parse_wrk(out: str) -> dict:
    def ms(v: str) -> float:
        num, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", v).groups()
        return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    lat = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": ms(lat["50"]),
        "p90_ms": ms(lat["90"]),
        "p99_ms": ms(lat["99"]),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def http_wrk(port: int, payload: bytes, connections: int, seconds: float, tmp: Path, pid: int) -> dict:
    data = tmp / f"body-{len(payload)}.json"
    data.write_bytes(payload)
    script = tmp / "post.lua"
    script.write_text(WRK_LUA.format(path=data))
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/invocations",
    ]
    subprocess.run([*cmd[:3], "-d1s", *cmd[4:]], capture_output=True, timeout=60)  # warm-up
    c0 = proc_cpu_s(pid)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if "Requests/sec" not in proc.stdout:
        raise SystemExit(f"wrk failed: {proc.stdout}{proc.stderr}")
    result = parse_wrk(proc.stdout)
    result["server_cpu_ms_per_req"] = (proc_cpu_s(pid) - c0) * 1000 / max(result["requests"], 1)
    return result


def http_python(port: int, payload: bytes, seconds: float, pid: int) -> dict:
    """One keep-alive connection, sequential requests (when wrk is not installed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    for _ in range(50):
        conn.request("POST", "/invocations", payload, headers)
        conn.getresponse().read()
    lat, c0, t0 = [], proc_cpu_s(pid), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s = time.perf_counter()
        conn.request("POST", "/invocations", payload, headers)
        r = conn.getresponse()
        r.read()
        lat.append((time.perf_counter() - s) * 1000)
    wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]  # noqa: E731
    return {
        "req_per_s": len(lat) / wall,
        "requests": len(lat),
        "p50_ms": q(0.5),
        "p90_ms": q(0.9),
        "p99_ms": q(0.99),
        "non_2xx": 0,
        "server_cpu_ms_per_req": (proc_cpu_s(pid) - c0) * 1000 / len(lat),
    }


def machine() -> dict:
    cpu = re.search(r"model name\s+:\s+(.+)", Path("/proc/cpuinfo").read_text())
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg()[0],
        "http_impl": _http_impl(),
    }


def _http_impl() -> str:
    import importlib.util

    return "httptools" if importlib.util.find_spec("httptools") else "h11 (pure Python)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-id")
    ap.add_argument("--root", help="artifact store root (default $TRAINKITE_ARTIFACTS or $TRAINKITE_HOME)")
    ap.add_argument(
        "--home",
        default=tempfile.mkdtemp(prefix="trainkite-bench-"),
        help="TRAINKITE_HOME for the training run when no --model-id is given",
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each measurement")
    ap.add_argument("--connections", default="1,16", help="wrk connection counts")
    ap.add_argument("--workers", type=int, default=1, help="server worker processes (TRAINKITE_SERVE_WORKERS)")
    args = ap.parse_args()
    folder, model_id = model_folder(args)
    conns = [int(c) for c in args.connections.split(",")]
    use_wrk = shutil.which("wrk") is not None
    results: dict = {
        "machine": machine(),
        "model_id": model_id,
        "workers": args.workers,
        "load_generator": "wrk" if use_wrk else "python",
        "in_process": {},
        "http": {},
    }
    weights = (folder / "weights.safetensors").stat().st_size
    results["weights_mb"] = round(weights / 2**20, 2)
    for batch in (1, 32):
        results["in_process"][batch] = in_process(folder, body(batch), args.seconds / 2)
    port = free_port()
    proc, startup = start_server(folder, port, args.workers)
    results.update(startup)
    results["memory_idle"] = proc_mem_mb(proc.pid)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for batch in (1, 32):
                for c in conns if use_wrk else [1]:
                    run = (
                        http_wrk(port, body(batch), c, args.seconds, Path(tmp), proc.pid)
                        if use_wrk
                        else http_python(port, body(batch), args.seconds, proc.pid)
                    )
                    results["http"][f"b{batch}_c{c}"] = {"batch": batch, "connections": c, **run}
        results["memory_after_load"] = proc_mem_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        results["exit_code_on_sigterm"] = proc.wait(30)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serving.json").write_text(json.dumps(results, indent=2))
    print(report(results))


def report(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"machine: {m['cpus']} CPUs ({m['cpu']}), load {m['loadavg_at_start']:.1f} at start, Python "
        f"{m['python']}, uvicorn HTTP: {m['http_impl']}, load generator: {r['load_generator']}, "
        f"server workers: {r.get('workers', 1)}",
        f"model {r['model_id']} ({r['weights_mb']} MB weights); process start → first /ping answer "
        f"{r['start_to_first_answer_s']} s, → /ping 200 {r['start_to_ping_200_s']} s; "
        f"server RSS idle {r['memory_idle']['rss_mb']} MB, after load {r['memory_after_load']['rss_mb']} MB "
        f"(peak {r['memory_after_load']['peak_rss_mb']} MB); exit on SIGTERM: {r['exit_code_on_sigterm']}",
        "",
        "| batch | path | conns | req/s (preds/s) | p50 / p90 / p99 ms | CPU ms/req | vs in-process |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in (1, 32):
        ip = r["in_process"][batch]
        lines.append(
            f"| {batch} | in-process (+JSON) | - | {ip['calls_per_s']:.0f} ({ip['calls_per_s'] * batch:.0f})"
            f" | - | {ip['cpu_ms_per_call']:.3f} | 1.00 |"
        )
        for h in (v for v in r["http"].values() if v["batch"] == batch):
            lines.append(
                f"| {batch} | HTTP | {h['connections']} | {h['req_per_s']:.0f} "
                f"({h['req_per_s'] * batch:.0f}) | {h['p50_ms']:.2f} / {h['p90_ms']:.2f} / "
                f"{h['p99_ms']:.2f} | {h['server_cpu_ms_per_req']:.3f} | "
                f"{h['req_per_s'] / ip['calls_per_s']:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
