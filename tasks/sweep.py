"""Hyper-parameter sweeps in plain Python: configurations from a grid (or a seeded random sample of it),
validated one by one, ordered so preprocessing runs once per variant, then ranked into a leaderboard.

A bad value in one configuration makes that configuration `invalid`, not the sweep: the others
still run. Only a sweep where every configuration is invalid is refused as a whole.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import random as _random
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from params.model import Params, ParamsError, apply_overrides, parse_overrides, validate_params
from trainkite.errors import TrainkiteError, UserInputError
from trainkite.ids import validate_model_id
from trainkite.store import ArtifactStore

RECORD_PREFIX = "_sweeps"
SCHEMA = "trainkite.sweep/1"
# A bigger grid is almost always a typo; --random N samples it instead.
MAX_CONFIGS = 1000


class NoCandidate(TrainkiteError):
    """Every configuration of a sweep failed or was invalid."""


class SweepConfig(BaseModel):
    index: int
    name: str
    overrides: dict[str, Any]
    model_id: str | None = None
    params: Params | None = None
    error: str | None = None
    group: str | None = None


class SweepPlan(BaseModel):
    sweep_id: str
    model_name: str
    artifacts_root: str | None
    primary_metric: str
    grid: dict[str, list[Any]]
    random: int | None
    seed: int
    max_parallel: int
    configs: list[SweepConfig]
    # Indices of the configurations to run, in order: all of waves[0] finishes before waves[1] starts.
    waves: list[list[int]]

    def config(self, index: int) -> SweepConfig:
        return self.configs[index - 1]


class ConfigOutcome(BaseModel):
    index: int
    status: Literal["completed", "failed"]
    metrics: dict[str, float] = {}
    error: str | None = None
    flow_run_id: str | None = None
    artifact_uri: str | None = None


def split_values(raw: str) -> list[str]:
    """`1,2` -> ['1', '2'], leaving commas inside quotes or brackets alone (`"a, b",[1,2]`)."""
    out, buf, depth, quote = [], [], 0, ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    out.append("".join(buf).strip())
    return out


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    """`--grid section.key=v1,v2` options -> {key: [values]}; values are read like `--set` values."""
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ParamsError(f"--grid {pair!r} must look like section.key=v1,v2 (e.g. train.learning_rate=0.2,0.5)")
        if key in grid:
            raise ParamsError(f"--grid {key} is given twice; list all its values in one option")
        values = split_values(raw)
        if any(v == "" for v in values):
            raise ParamsError(f"--grid {pair!r} has an empty value")
        grid[key] = [parse_overrides([f"{key}={v}"])[key] for v in values]
    return grid


def combinations(grid: dict[str, list[Any]], random: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Every point of the grid in order, or `random` distinct points drawn with `seed` (same seed, same points)."""
    keys = list(grid)
    sizes = [len(grid[k]) for k in keys]
    total = 1
    for s in sizes:
        total *= s
    if random is None:
        if total > MAX_CONFIGS:
            raise UserInputError(
                f"the grid has {total} configurations (more than {MAX_CONFIGS}); sample it with --random N"
            )
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    if random < 1:
        raise UserInputError("--random must be at least 1")
    picked = sorted(_random.Random(seed).sample(range(total), min(random, total)))
    out = []
    for flat in picked:
        combo, rest = {}, flat
        # Mixed-radix decoding in itertools.product order (last key varies fastest).
        for k, s in reversed(list(zip(keys, sizes, strict=True))):
            rest, i = divmod(rest, s)
            combo[k] = grid[k][i]
        out.append({k: combo[k] for k in keys})
    return out


def sweep_ids(sweep_id: str | None, env: dict[str, str] | None = None) -> tuple[str, str]:
    """(sweep ID, model-ID prefix). In a Buildkite build the models are `<pipeline>-<build>-c<N>`."""
    env = dict(os.environ) if env is None else env
    number, slug = env.get("BUILDKITE_BUILD_NUMBER"), env.get("BUILDKITE_PIPELINE_SLUG")
    build = validate_model_id(f"{slug}-{number}") if number and slug else None
    if sweep_id:
        sid = validate_model_id(sweep_id if sweep_id.startswith("sweep-") else f"sweep-{sweep_id}")
        return sid, build if build and sid == f"sweep-{build}" else sid
    if build:
        return f"sweep-{build}", build
    sid = f"sweep-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
    return sid, sid


def features_group(params: Params) -> str:
    """Configurations with the same group share their preprocessing (same data, same feature settings)."""
    spec = {
        "data": params.data.model_dump(mode="json"),
        "evaluation_query": params.evaluation.query,
        "root": params.artifacts.root,
        "model_type": params.model.type,
        "features": params.preprocess_key(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def plan_sweep(
    base: Params,
    grid: dict[str, list[Any]],
    random: int | None = None,
    seed: int = 0,
    max_parallel: int = 2,
    sweep_id: str | None = None,
    env: dict[str, str] | None = None,
) -> SweepPlan:
    if not grid:
        raise UserInputError("a sweep needs at least one --grid section.key=v1,v2")
    if not 1 <= max_parallel <= 64:
        raise UserInputError(f"--max-parallel must be between 1 and 64 (got {max_parallel})")
    sid, prefix = sweep_ids(sweep_id, env)
    base_data = base.model_dump(mode="json")
    configs = []
    for i, overrides in enumerate(combinations(grid, random, seed), start=1):
        name = f"c{i}"
        try:
            params = validate_params(apply_overrides(base_data, overrides), source=f"sweep configuration {name}")
        except ParamsError as err:
            configs.append(SweepConfig(index=i, name=name, overrides=overrides, error=str(err)))
            continue
        configs.append(
            SweepConfig(
                index=i,
                name=name,
                overrides=overrides,
                params=params,
                model_id=validate_model_id(f"{prefix}-{name}"),
                group=features_group(params),
            )
        )
    valid = [c for c in configs if c.error is None]
    if not valid:
        raise ParamsError(f"no configuration of the sweep is valid; the first: {configs[0].error}")
    leaders: dict[str, int] = {}
    for c in valid:
        leaders.setdefault(c.group, c.index)
    first = sorted(leaders.values())
    rest = [c.index for c in valid if c.index not in set(first)]
    return SweepPlan(
        sweep_id=sid,
        model_name=base.model.name,
        artifacts_root=base.artifacts.root,
        primary_metric=base.evaluation.primary_metric,
        grid=grid,
        random=random,
        seed=seed,
        max_parallel=max_parallel,
        configs=configs,
        waves=[w for w in (first, rest) if w],
    )


def score_of(metrics: dict[str, float], metric: str) -> tuple[str | None, float | None]:
    """The primary metric on the human-labelled evaluation set, else on the test split."""
    for split in ("evaluation", "test"):
        key = f"{split}_{metric}"
        if key in metrics:
            return key, float(metrics[key])
    return None, None


def leaderboard(plan: SweepPlan, outcomes: list[ConfigOutcome]) -> list[dict[str, Any]]:
    """One row per configuration, best first: scored runs by score, then failed, then invalid."""
    by_index = {o.index: o for o in outcomes}
    rows = []
    for c in plan.configs:
        o = by_index.get(c.index)
        status = "invalid" if c.error else (o.status if o else "failed")
        metrics = o.metrics if o else {}
        score_key, score = score_of(metrics, plan.primary_metric)
        error = c.error or (o.error if o else "did not run")
        rows.append(
            {
                "config_id": c.name,
                "index": c.index,
                "model_id": c.model_id if status != "invalid" else None,
                "status": status,
                "config": c.overrides,
                "score": score,
                "score_key": score_key,
                "metrics": metrics,
                "error": None if status == "completed" else error,
                "flow_run_id": o.flow_run_id if o else None,
                "artifact_uri": o.artifact_uri if o else None,
            }
        )
    order = {"completed": 0, "failed": 1, "invalid": 2}
    rows.sort(key=lambda r: (order[r["status"]], r["score"] is None, -(r["score"] or 0.0), r["index"]))
    for rank, r in enumerate(rows, start=1):
        r["rank"] = rank
        r["candidate"] = False
    if rows and rows[0]["status"] == "completed" and rows[0]["score"] is not None:
        rows[0]["candidate"] = True
    return rows


def sweep_record(plan: SweepPlan, outcomes: list[ConfigOutcome], deployment: str | None = None) -> dict[str, Any]:
    rows = leaderboard(plan, outcomes)
    best = rows[0] if rows and rows[0]["candidate"] else None
    return {
        "schema": SCHEMA,
        "sweep_id": plan.sweep_id,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_name": plan.model_name,
        "primary_metric": plan.primary_metric,
        "grid": plan.grid,
        "random": plan.random,
        "seed": plan.seed,
        "max_parallel": plan.max_parallel,
        "deployment": deployment,
        "counts": {s: sum(r["status"] == s for r in rows) for s in ("completed", "failed", "invalid")},
        "candidate": {k: best[k] for k in ("model_id", "config_id", "config", "score", "score_key", "artifact_uri")}
        if best
        else None,
        "rows": rows,
    }


def flat_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Leaderboard rows with one column per swept key and per metric (Prefect table, CSV)."""
    keys = list(record["grid"])
    metric_names = sorted({m for r in record["rows"] for m in r["metrics"]})
    out = []
    for r in record["rows"]:
        row: dict[str, Any] = {
            "rank": r["rank"],
            "candidate": "yes" if r["candidate"] else "",
            "config": r["config_id"],
            "model_id": r["model_id"] or "",
            "status": r["status"],
            record["primary_metric"]: "" if r["score"] is None else r["score"],
        }
        row.update({k: json.dumps(r["config"].get(k)) for k in keys})
        row.update({m: r["metrics"].get(m, "") for m in metric_names})
        row["error"] = (r["error"] or "")[:500]
        out.append(row)
    return out


def write_csv(record: dict[str, Any], path: Path) -> None:
    rows = flat_rows(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rank"])
        w.writeheader()
        w.writerows(rows)


def leaderboard_markdown(record: dict[str, Any]) -> str:
    c = record["candidate"]
    head = (
        f"candidate **{c['model_id']}** ({c['config_id']}, {c['score_key']} = {c['score']:.4f})"
        if c
        else "no candidate: every configuration failed"
    )
    return f"### Sweep `{record['sweep_id']}`\n\n{head}\n"


def record_key(sweep_id: str) -> str:
    return f"{RECORD_PREFIX}/{validate_model_id(sweep_id)}.json"


def save_record(store: ArtifactStore, record: dict[str, Any]) -> str:
    key = record_key(record["sweep_id"])
    store.put_bytes(json.dumps(record, indent=2, sort_keys=True, default=str).encode(), key)
    return key


def read_record(store: ArtifactStore, sweep_id: str) -> dict[str, Any] | None:
    key = record_key(sweep_id)
    return json.loads(store.get_bytes(key)) if store.exists(key) else None
