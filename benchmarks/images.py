"""The images: sizes, cold start, and serving latency/throughput of numpy / ONNX Runtime vs torch.

    flock /tmp/trainkite-bench.lock .venv/bin/python benchmarks/images.py --bow DIR --encoder DIR
    .venv/bin/python benchmarks/images.py --train-models        # trains a bow and a small encoder model first

DIR is a published model folder (`<root>/<name>/<model-id>/`, e.g. from `trainkite show`). Images come from
scripts/build-images.sh (built if absent: `--build`). Measured, each bounded:
- image sizes (engine's own figure, uncompressed);
- cold start: `run` to the first `/ping` 200, the model mounted at /opt/ml/model, `--runs` times each:
  serve image (numpy / ONNX Runtime) vs train image forced to torch (TRAINKITE_SERVE_BACKEND=torch);
- in-process predictor latency, batch 1 and batch 32 (median of repeated calls, one thread): numpy vs
  torch for bow, ONNX Runtime vs torch for the encoder;
- HTTP throughput and median latency, one worker, `--clients` keep-alive client threads for `--seconds`:
  the serve container vs `trainkite serve` on the host (lean, and forced to torch).
Results: benchmarks/out/images.json and a markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"


def engine() -> str:
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return "podman"


def texts(n: int) -> list[str]:
    with open(REPO / "data" / "demo" / "comments.csv", newline="") as f:
        rows = [r["text"] for r in csv.DictReader(f)]
    return [rows[i % len(rows)] for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ping(port: int, started: float, timeout: float = 180) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"no /ping 200 on {port} in {timeout} s")


def model_mount(folder: Path, tmp: Path) -> Path:
    from tasks.package import build_archive, extract_archive

    manifest = json.loads((folder / "manifest.json").read_text())
    dest = tmp / f"model-{uuid.uuid4().hex[:6]}"
    archive = build_archive(folder, manifest, tmp / f"{dest.name}.tar.gz")
    extract_archive(Path(archive["path"]), dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


class Container:
    def __init__(self, eng: str, image: str, model_dir: Path, port: int, env: dict[str, str] | None = None):
        self.eng, self.name = eng, f"trainkite-bench-{uuid.uuid4().hex[:8]}"
        cmd = [
            eng,
            "run",
            "-d",
            "--name",
            self.name,
            "--network",
            "host",
            "-v",
            f"{model_dir}:/opt/ml/model:ro",
            "-e",
            f"SAGEMAKER_BIND_TO_PORT={port}",
            "-e",
            "SAGEMAKER_MODEL_SERVER_WORKERS=1",
        ]
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        self.started = time.monotonic()
        subprocess.run([*cmd, image, "serve"], check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        subprocess.run([self.eng, "rm", "-f", self.name], capture_output=True, timeout=120)


def image_size(eng: str, image: str) -> int:
    out = subprocess.run(
        [eng, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def cold_starts(eng: str, image: str, folder: Path, tmp: Path, runs: int, env=None) -> list[float]:
    out = []
    mount = model_mount(folder, tmp)
    for _ in range(runs):
        port = free_port()
        c = Container(eng, image, mount, port, env)
        try:
            out.append(round(wait_ping(port, c.started), 2))
        finally:
            c.stop()
    return out


def in_process(folder: Path, backend: str, batch: int, seconds: float) -> dict:
    code = f"""
import json, sys, time
sys.path.insert(0, {str(REPO)!r})
import os
os.environ["OMP_NUM_THREADS"] = "1"
from pathlib import Path
from models.lean_predictor import load_predictor
from trainkite.manifest import load_dir_manifest
folder = Path({str(folder)!r})
p = load_predictor(folder, load_dir_manifest(folder), backend={backend!r})
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(1)
texts = {texts(batch)!r}
for _ in range(5):
    p.predict(texts)
times = []
end = time.monotonic() + {seconds}
while time.monotonic() < end or len(times) < 20:
    t = time.perf_counter(); p.predict(texts); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({{"backend": p.backend, "calls": len(times), "p50_ms": round(times[len(times)//2] * 1e3, 3),
                  "p90_ms": round(times[int(len(times) * 0.9)] * 1e3, 3)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def http_load(port: int, batch: int, clients: int, seconds: float) -> dict:
    body = json.dumps({"instances": texts(batch)}).encode()
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.monotonic() < end:
            t = time.perf_counter()
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                errors[0] += 1
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat.sort()
    return {
        "requests": len(lat),
        "errors": errors[0],
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(lat[len(lat) // 2] * 1e3, 2) if lat else None,
        "p90_ms": round(lat[int(len(lat) * 0.9)] * 1e3, 2) if lat else None,
    }


def host_server(folder: Path, port: int, backend: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "TRAINKITE_SERVE_BACKEND": backend,
        "SM_MODEL_DIR": str(folder),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "TRAINKITE_SERVE_WORKERS": "1",
    }
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "trainkite-container"), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def train_models(home: Path) -> tuple[Path, Path]:
    env = {**os.environ, "TRAINKITE_HOME": str(home)}
    trainkite = str(Path(sys.executable).parent / "trainkite")
    folders = []
    for extra in (
        [],
        [
            "--set",
            'model.type="encoder"',
            "--set",
            'data.query="SELECT text, sentiment AS label FROM comments ORDER BY md5(text) LIMIT 240"',
            "--set",
            "train.epochs=4",
            "--set",
            "train.learning_rate=0.01",
        ],
    ):
        out = subprocess.run(
            [trainkite, "train", "--set", 'tracking.backend="none"', *extra, "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        model_id = json.loads(out.stdout)["model_id"]
        folders.append(home / "artifacts" / "sentiment" / model_id)
    return folders[0], folders[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bow", type=Path)
    ap.add_argument("--encoder", type=Path)
    ap.add_argument("--train-models", action="store_true")
    ap.add_argument("--serve-image")
    ap.add_argument("--train-image")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    eng = engine()
    tmp = Path(tempfile.mkdtemp(prefix="trainkite-bench-images-"))
    try:
        if args.train_models:
            args.bow, args.encoder = train_models(tmp / "home")
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        tag = commit + ("-dirty" if dirty else "")
        serve_image = args.serve_image or f"trainkite-serve:{tag}"
        train_image = args.train_image or f"trainkite-train:{tag}"
        r: dict = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_avg_start": os.getloadavg(),
                "engine": eng,
            },
            "images": {},
            "cold_start_s": {},
            "in_process": {},
            "http": {},
        }
        for name, image in (("serve", serve_image), ("train", train_image)):
            try:
                r["images"][name] = {"image": image, "mb": round(image_size(eng, image) / 1e6)}
            except subprocess.CalledProcessError:
                r["images"][name] = {"image": image, "mb": None}
        models = {"bow": args.bow, "encoder": args.encoder}
        for kind, folder in models.items():
            if folder is None:
                continue
            r["cold_start_s"][f"{kind} serve image ({'numpy' if kind == 'bow' else 'onnxruntime'})"] = cold_starts(
                eng, serve_image, folder, tmp, args.runs
            )
            if r["images"]["train"]["mb"]:
                r["cold_start_s"][f"{kind} train image (torch)"] = cold_starts(
                    eng, train_image, folder, tmp, args.runs, {"TRAINKITE_SERVE_BACKEND": "torch"}
                )
            for batch in (1, 32):
                for backend in ("lean", "torch"):
                    res = in_process(folder, backend, batch, args.seconds)
                    r["in_process"][f"{kind} batch {batch} {res['backend']}"] = res
            mount = model_mount(folder, tmp)
            for batch in (1, 32):
                port = free_port()
                c = Container(eng, serve_image, mount, port)
                try:
                    wait_ping(port, c.started)
                    r["http"][f"{kind} batch {batch} serve container"] = http_load(
                        port, batch, args.clients, args.seconds
                    )
                finally:
                    c.stop()
                for backend in ("lean", "torch"):
                    port = free_port()
                    p = host_server(folder, port, backend)
                    try:
                        wait_ping(port, time.monotonic())
                        r["http"][f"{kind} batch {batch} trainkite serve ({backend})"] = http_load(
                            port, batch, args.clients, args.seconds
                        )
                    finally:
                        p.terminate()
                        p.wait(timeout=60)
        r["machine"]["load_avg_end"] = os.getloadavg()
    finally:
        if args.train_models:  # the trainings started the temporary home's local Prefect server
            subprocess.run(
                [str(Path(sys.executable).parent / "trainkite"), "server", "stop", "--force"],
                env={**os.environ, "TRAINKITE_HOME": str(tmp / "home")},
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "images.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
