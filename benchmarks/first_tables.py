"""A team's first run on its own table, for tables unlike the demo: generated probes through `trainkite train`.

    flock /tmp/trainkite-bench.lock .venv/bin/python benchmarks/first_tables.py [--out first_tables.json]

Each table is generated (seeded, nothing typed by hand) to stand for a kind of data a team brings: Chinese
reviews (no spaces between words), Hindi reviews (vowel signs inside words), 500 intents of 18 rows each, 1,000 of 20,
a rare class (1 %), labels typed in two letter cases, a label column that is an ID, a semicolon CSV headed
`Text;Label`, a CSV with one unquoted comma in a text, long documents (3,000 of 1,500 words; 20,000 of 400).
Each runs as a user would run it: the shipped `params/sentiment.toml` with only `data.path`, `data.query` and
`data.labels` (unset) changed, no evaluation set, tracking off, its own TRAINKITE_HOME. Printed per table: exit
code, wall time, peak RSS of the process, the resolved model type, test accuracy / macro-F1, or the refusal's
message. A probe's class words are planted in random filler, so a model that reads the text the right way scores
near 100 %; one that does not, near chance.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILLER = {
    "chinese": ["这个", "产品", "我", "的", "是", "了", "很", "非常", "服务", "质量", "价格", "东西", "今天", "收到"],
    "hindi": ["यह", "उत्पाद", "मैंने", "खरीदा", "और", "सेवा", "कीमत", "गुणवत्ता", "आज", "मिला", "बहुत"],
}
POLAR = {
    "chinese": (["好", "棒", "喜欢", "满意", "优秀", "推荐"], ["差", "糟糕", "讨厌", "失望", "垃圾", "退货"]),
    "hindi": (["अच्छा", "शानदार", "पसंद", "संतुष्ट", "बढ़िया"], ["खराब", "बेकार", "नापसंद", "निराश", "घटिया"]),
}


def _write(folder: Path, rows: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "t.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("text", "label"))
        w.writerows(rows)


def tables(root: Path) -> dict[str, Path]:
    rng = random.Random(4)
    words = [f"w{i}" for i in range(3_000)]
    out = {}
    for lang, joiner in (("chinese", ""), ("hindi", " ")):
        good, bad = POLAR[lang]
        rows = []
        for i in range(2_000):
            text = [rng.choice(FILLER[lang]) for _ in range(8)]
            text.insert(rng.randrange(9), rng.choice(good if i % 2 else bad))
            rows.append((joiner.join(text), "positive" if i % 2 else "negative"))
        _write(root / lang, rows)
        out[lang] = root / lang
    rows = []
    for i in range(9_000):
        c = i % 500
        rows.append((" ".join(rng.choice(words) for _ in range(8)) + f" topic{c} about{c}", f"intent_{c}"))
    _write(root / "intents_500", rows)
    out["intents_500"] = root / "intents_500"
    rows = []  # twice the classes, a few more rows each: linear's weights (classes x n-grams) no longer fit: bow
    for i in range(20_000):
        c = i % 1_000
        rows.append((" ".join(rng.choice(words) for _ in range(8)) + f" topic{c} about{c}", f"intent_{c}"))
    _write(root / "intents_1000", rows)
    out["intents_1000"] = root / "intents_1000"
    rows = [
        (" ".join(rng.choice(words) for _ in range(10)) + (" outage down" if i % 100 == 0 else " fine"),
         "incident" if i % 100 == 0 else "routine")
        for i in range(5_000)
    ]  # fmt: skip
    _write(root / "rare_class", rows)
    out["rare_class"] = root / "rare_class"
    rows = [
        (" ".join(rng.choice(words) for _ in range(10)) + (" good" if i % 2 else " bad"),
         ("Positive" if i % 7 == 0 else "positive") if i % 2 else "negative")
        for i in range(1_000)
    ]  # fmt: skip
    _write(root / "label_case", rows)
    out["label_case"] = root / "label_case"
    rows = [
        (" ".join(rng.choice(words) for _ in range(10)) + (" good" if i % 2 else " bad"), f"c{i:05d}")
        for i in range(5_000)
    ]
    _write(root / "label_is_an_id", rows)  # SELECT text, comment_id AS label: a class per row
    out["label_is_an_id"] = root / "label_is_an_id"
    polar = [
        (
            " ".join(rng.choice(words) for _ in range(10)) + (" good" if i % 2 else " bad"),
            ["negative", "positive"][i % 2],
        )
        for i in range(2_000)
    ]
    (root / "semicolon_headed_Text").mkdir(parents=True)  # a European spreadsheet's export: ';', a capitalised header
    with open(root / "semicolon_headed_Text" / "t.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(("Text", "Label"))
        w.writerows(polar)
    out["semicolon_headed_Text"] = root / "semicolon_headed_Text"
    (root / "ragged_line").mkdir(parents=True)  # an export that did not quote a text holding a comma, at line 302
    lines = ["text,label", *(f"{t},{lab}" for t, lab in polar)]
    lines.insert(301, "fine, but slow,positive")
    (root / "ragged_line" / "t.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out["ragged_line"] = root / "ragged_line"
    # Long documents, four topics, 2 % of their words the topic's own: few (linear once the statistics cut them at
    # preprocess.max_tokens) and many (bow, whose batch then holds a bounded number of ids).
    vocab = [f"w{i}" for i in range(20_000)]
    topics = [[f"t{c}_{j}" for j in range(40)] for c in range(4)]
    for name, n, length in (("long_documents_3k", 3_000, 1_500), ("long_documents_20k", 20_000, 400)):
        rows = []
        for i in range(n):
            c = i % 4
            words = [rng.choice(topics[c]) if rng.random() < 0.02 else rng.choice(vocab) for _ in range(length)]
            rows.append((" ".join(words), f"topic{c}"))
        _write(root / name, rows)
        out[name] = root / name
    return out


def params_file(root: Path) -> Path:
    lines = []
    for line in (REPO / "params" / "sentiment.toml").read_text().splitlines():
        if line.startswith("labels") or line.startswith("query"):
            continue  # data.labels from the data; data.query and evaluation.query set below
        lines.append(line)
        if line == "[data]":
            lines.append('query = "SELECT text, label FROM t"')
    path = root / "params.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(name: str, folder: Path, params: Path, home: Path) -> dict:
    cmd = [
        str(REPO / ".venv" / "bin" / "trainkite"),
        "train",
        "--params",
        str(params),
        "--set",
        f'data.path="{folder}"',
        "--set",
        'tracking.backend="none"',
        "--json",
    ]
    env = {**os.environ, "TRAINKITE_HOME": str(home)}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (KiB on Linux)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out_f.seek(0), err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    row = {"table": name, "rc": proc.returncode, "wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    try:
        out = json.loads(stdout)
    except json.JSONDecodeError:
        row["error"] = (stderr.strip().splitlines() or ["no output"])[-1]
        return row
    if "error" in out:
        row["error"] = out["error"]
        return row
    m = out["metrics"]
    row.update({"test_accuracy": m["test_accuracy"], "test_macro_f1": m["test_macro_f1"]})
    params_json = Path(out["artifact_uri"]) / "params.json"
    row["model_type"] = json.loads(params_json.read_text())["model"]["type"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="trainkite-first-") as tmp:
        root = Path(tmp)
        params = params_file(root)
        rows = [run(name, folder, params, root / "home") for name, folder in tables(root / "data").items()]
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "trainkite"), "server", "stop"],
            env={**os.environ, "TRAINKITE_HOME": str(root / "home")},
            capture_output=True,
        )
    for row in rows:
        print(json.dumps(row, ensure_ascii=False))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2, ensure_ascii=False))
    sys.exit(0)


if __name__ == "__main__":
    main()
