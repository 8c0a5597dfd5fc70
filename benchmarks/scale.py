"""Real data at real scale: the whole `trainkite train` process next to fastText on the same rows.

    .venv/bin/pip install -c requirements.lock -e '.[bench]'
    flock /tmp/trainkite-bench.lock .venv/bin/python benchmarks/scale.py --data ../shared/data/sst2 \
        --rows 100000,1000000,3000000 [--rows-10m]

Corpus (generated, deterministic): each row is an SST-2 training phrase with its label, padded to about 20
words with words drawn (seeded) from the same corpus's vocabulary at their corpus frequency, as the issue's
measurement did. For each size it runs, one after the other:

1. `trainkite train` as a subprocess (bow, 2^20 buckets, 16 dims, batch 256, the shipped rate, 2 epochs, 1 training
   thread, tracking off), against a local Prefect server started once beforehand: wall time, peak RSS of
   the whole process tree (sampled from /proc every 50 ms), test-split accuracy from the published metrics;
2. the same steps as plain functions in a child process, to time each stage (fetch, preprocess, train,
   evaluate) with that process's peak RSS;
3. fastText (wordNgrams 2, dim 16, 2 epochs, 1 thread, bucket 2^20, its default lr 0.1: see --ft-lr):
   writing its input file (DuckDB, the same split rule as trainkite), training, and accuracy on the same
   test split.

Prints one JSON object per size and a summary table; BENCHMARKS.md records the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TRAIN = [
    "model.type='bow'",  # the setup (the epoch keys below would pick it anyway)
    "preprocess.buckets=1048576",
    "preprocess.ngram_max=2",
    "model.embedding_dim=16",
    "train.epochs=2",
    "train.batch_size=256",
    # The rate is left to the shipped rule: the 0.05 was per example under a summed loss, which bow's
    # update (embedding rows per example, the linear layer per batch mean) has no single equivalent of.
    "train.threads=1",
    "train.patience=0",
    "tracking.backend='none'",
    "evaluation.query=''",
    "data.labels=['0','1']",
    'data.query="SELECT text, CAST(label AS VARCHAR) AS label FROM comments"',
    "evaluation.primary_metric='accuracy'",
]


def build_corpus(sst2: Path, rows: int, out: Path, seed: int = 14, words: int = 20) -> None:
    """`rows` comments: an SST-2 phrase + seeded padding from the corpus vocabulary, to `words` words."""
    src = pd.read_csv(sst2 / "train.csv", usecols=["text", "label"], keep_default_na=False)
    phrases = src["text"].astype(str).to_numpy()
    labels = src["label"].astype(int).to_numpy()
    tokens = " ".join(phrases).split()
    vocab, freq = np.unique(np.asarray(tokens), return_counts=True)
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    chunk = 500_000
    with open(out, "w", encoding="utf-8") as f:
        f.write("text,label\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            pick = rng.integers(0, len(phrases), size=n)
            base = phrases[pick]
            have = np.char.count(base.astype(str), " ") + 1
            pad_n = np.maximum(words - have, 0)
            pads = vocab[rng.choice(len(vocab), size=int(pad_n.sum()), p=freq / freq.sum())]
            cut = np.cumsum(pad_n)[:-1]
            lines = []
            for i, (b, pad) in enumerate(zip(base, np.split(pads, cut), strict=True)):
                text = (b + " " + " ".join(pad)) if len(pad) else b
                # A row number keeps the texts distinct (no conflicting duplicates from repeated phrases).
                lines.append(f'"{text} r{start + i}",{labels[pick[i]]}\n')
            f.write("".join(lines))


class TreeRSS:
    """Peak total RSS of a process and all its descendants, sampled from /proc."""

    def __init__(self, pid: int, every: float = 0.05):
        self.pid, self.every, self.peak, self.peak_anon = pid, every, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        out, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            total = anon = 0
            for p in self._tree():
                try:
                    with open(f"/proc/{p}/statm") as f:
                        fields = f.read().split()
                    total += int(fields[1]) * page
                    # resident - shared: what the process owns, without the pages of the memory-mapped feature
                    # files and libraries (the kernel can drop and re-read those).
                    anon += (int(fields[1]) - int(fields[2])) * page
                except (OSError, ValueError, IndexError):
                    pass
            self.peak = max(self.peak, total)
            self.peak_anon = max(self.peak_anon, anon)
            self._stop.wait(self.every)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._t.join()
        return self.peak, self.peak_anon


def timed(cmd: list[str], env: dict, cwd: Path = REPO) -> tuple[float, tuple[int, int], subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rss = TreeRSS(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    peak = rss.stop()
    return wall, peak, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


STAGES = r"""
import json, resource, sys, time
from pathlib import Path
from params import load_params
from tasks import data, defaults, evaluate as ev
from models import registry as model_types
from trainkite.manifest import ModelRef
from trainkite.store import LocalStore
folder, work, overrides = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
params = load_params(None, [f"data.path={json.dumps(folder)}", *overrides])
store = LocalStore(work / "store")
t = [time.perf_counter()]
ds = data.fetch_dataset(params, work); t.append(time.perf_counter())
params = defaults.resolve_params(params, defaults.dataset_stats(ds.snapshot_path, 2, len(ds.labels)))[0]
t.append(time.perf_counter())
feats = model_types.featurize(ds, params, store, work); t.append(time.perf_counter())
trained = model_types.train(feats, params, store, ModelRef("scale", "bench"), work); t.append(time.perf_counter())
rep = ev.evaluate(trained, feats, params, store, work, "scale/bench"); t.append(time.perf_counter())
print(json.dumps({"fetch_s": t[1] - t[0], "resolve_s": t[2] - t[1], "preprocess_s": t[3] - t[2],
                  "train_s": t[4] - t[3], "evaluate_s": t[5] - t[4], "test_accuracy": rep.metrics["test"]["accuracy"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

SPLIT_SQL = r"""
COPY (SELECT '__label__' || label || ' ' || replace(text, chr(10), ' ') FROM rows WHERE split = '{split}')
TO '{out}' (FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER chr(31))
"""


def fasttext_run(csv: Path, work: Path, lr: float, seed: int = 17, validation: float = 0.1, test: float = 0.1) -> dict:
    import duckdb
    import fasttext

    t0 = time.perf_counter()
    con = duckdb.connect()
    h = (
        "(('0x' || left(sha256(" + repr(str(seed)) + " || chr(31) || text), 16))::UBIGINT::DOUBLE "
        "/ 18446744073709551616.0)"
    )
    con.execute(
        f"CREATE VIEW rows AS SELECT CAST(label AS VARCHAR) AS label, text, CASE WHEN {h} < {test!r} "
        f"THEN 'test' WHEN {h} < {test + validation!r} THEN 'validation' ELSE 'train' END AS split "
        f"FROM read_csv('{csv}', header=true, all_varchar=true)"
    )
    for split in ("train", "test"):
        con.execute(SPLIT_SQL.format(split=split, out=work / f"ft.{split}"))
    con.close()
    t1 = time.perf_counter()
    model = fasttext.train_supervised(
        str(work / "ft.train"), wordNgrams=2, dim=16, epoch=2, thread=1, bucket=1 << 20, lr=lr, verbose=0, minCount=1
    )
    t2 = time.perf_counter()
    n, precision, _ = model.test(str(work / "ft.test"))
    return {
        "prep_s": t1 - t0,
        "train_s": t2 - t1,
        "prep_plus_train_s": t2 - t0,
        "test_accuracy": precision,
        "test_rows": n,
    }


def one_size(sst2: Path, rows: int, ft_lr: float, keep: Path | None, home: Path, extra: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"bench-scale-{rows}-", dir=keep))
    try:
        folder = work / "data"
        t0 = time.perf_counter()
        build_corpus(sst2, rows, folder / "comments.csv")
        build_s = time.perf_counter() - t0
        size_mb = (folder / "comments.csv").stat().st_size / 2**20
        env = {**os.environ, "TRAINKITE_HOME": str(home)}
        overrides = [f"data.path={json.dumps(str(folder))}", *TRAIN, *extra]
        sets = [a for o in overrides for a in ("--set", o)]
        wall, (peak, peak_anon), proc = timed([sys.executable, "-m", "cli", "train", *sets, "--json"], env)
        if proc.returncode != 0:
            raise SystemExit(f"trainkite train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout)
        whole = {
            "wall_s": wall,
            "peak_rss_tree_mb": peak / 2**20,
            "peak_rss_tree_not_shared_mb": peak_anon / 2**20,
            "test_accuracy": res.get("metrics", {}).get("test_accuracy"),
        }
        s_wall, (s_peak, _), sp = timed(
            [sys.executable, "-c", STAGES, str(folder), str(work / "stages"), json.dumps([*TRAIN, *extra])], env
        )
        if sp.returncode != 0:
            raise SystemExit(f"stages failed:\n{sp.stderr[-3000:]}")
        stages = {
            **json.loads(sp.stdout.strip().splitlines()[-1]),
            "wall_s": s_wall,
            "peak_rss_tree_mb": s_peak / 2**20,
        }
        ft = fasttext_run(folder / "comments.csv", work, ft_lr)
        return {
            "rows": rows,
            "csv_mb": round(size_mb, 1),
            "corpus_build_s": round(build_s, 1),
            "trainkite_train_process": whole,
            "stages": stages,
            "fasttext": ft,
            "ratio_whole_vs_fasttext": wall / ft["prep_plus_train_s"],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the SST-2 folder (train.csv)")
    ap.add_argument("--rows", default="100000,1000000,3000000")
    ap.add_argument("--rows-10m", action="store_true", help="add the 10,000,000-row size (long on 2 cores)")
    ap.add_argument("--ft-lr", type=float, default=0.1, help="fastText learning rate (its default)")
    ap.add_argument("--tmp", type=Path, default=None, help="where the corpora are written (default: $TMPDIR)")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="trainkite only (experiments)")
    args = ap.parse_args()
    sizes = [int(r) for r in args.rows.split(",") if r] + ([10_000_000] if args.rows_10m else [])
    print(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
        ),
        flush=True,
    )
    out = []
    # One local Prefect server, started before any timing (a first start is a one-off, not a cost per run),
    # stopped at the end.
    home = Path(tempfile.mkdtemp(prefix="bench-scale-home-", dir=args.tmp))
    env = {**os.environ, "TRAINKITE_HOME": str(home)}
    subprocess.run(
        [sys.executable, "-m", "cli", "server", "start"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    try:
        for rows in sizes:
            r = one_size(args.data, rows, args.ft_lr, args.tmp, home, args.overrides)
            out.append(r)
            print(json.dumps(r), flush=True)
    finally:
        subprocess.run(
            [sys.executable, "-m", "cli", "server", "stop"], cwd=REPO, env=env, capture_output=True, timeout=120
        )
        shutil.rmtree(home, ignore_errors=True)
    print(
        f"\n{'rows':>10} {'whole s':>8} {'RSS MB':>7} {'fetch':>6} {'prep':>6} {'train':>6} {'eval':>6} "
        f"{'acc':>6} | {'ft prep':>7} {'ft train':>8} {'ft acc':>6} {'ratio':>5}"
    )
    for r in out:
        w, s, f = r["trainkite_train_process"], r["stages"], r["fasttext"]
        print(
            f"{r['rows']:>10,} {w['wall_s']:>8.1f} {w['peak_rss_tree_mb']:>7.0f} {s['fetch_s']:>6.1f} "
            f"{s['preprocess_s']:>6.1f} {s['train_s']:>6.1f} {s['evaluate_s']:>6.1f} {s['test_accuracy']:>6.4f} | "
            f"{f['prep_s']:>7.1f} {f['train_s']:>8.1f} {f['test_accuracy']:>6.4f} "
            f"{r['ratio_whole_vs_fasttext']:>5.2f}"
        )


if __name__ == "__main__":
    main()
