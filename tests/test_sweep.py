"""Sweeps: planning in plain Python, then real sweeps against the session's Prefect server."""

from __future__ import annotations

import csv
import json

import pytest

from tests.process_helpers import run_artifacts

from params.model import ParamsError
from tasks import sweep as sw
from tests.test_cli import tk
from trainkite.store import open_store

GOOD_QUERY = '"SELECT text, sentiment AS label FROM comments"'
EMPTY_QUERY = '"SELECT text, sentiment AS label FROM comments WHERE 1=0"'


# --- planning, no server -------------------------------------------------------------------------------------


def test_grid_values_are_read_like_set_values():
    grid = sw.parse_grid(
        [
            "train.learning_rate=0.2,0.5",
            "data.labels=['a','b'],['a', 'b', 'c']",
            'data.query="SELECT a, b FROM t",x',
            "train.amp=true,false",
        ]
    )
    assert grid == {
        "train.learning_rate": [0.2, 0.5],
        "data.labels": [["a", "b"], ["a", "b", "c"]],
        "data.query": ["SELECT a, b FROM t", "x"],
        "train.amp": [True, False],
    }
    for bad in ("train.epochs", "train.epochs=", "=1,2", "train.epochs=1,,2"):
        with pytest.raises(ParamsError):
            sw.parse_grid([bad])


def test_random_search_is_seeded_and_distinct():
    grid = {"a": [1, 2, 3], "b": [10, 20, 30], "c": [True, False]}
    assert len(sw.combinations(grid)) == 18
    one, two = sw.combinations(grid, random=5, seed=7), sw.combinations(grid, random=5, seed=7)
    assert one == two and len({json.dumps(c, sort_keys=True) for c in one}) == 5
    assert all(c in sw.combinations(grid) for c in one)
    assert sw.combinations(grid, random=5, seed=8) != one
    assert len(sw.combinations(grid, random=100, seed=1)) == 18


def test_plan_runs_one_configuration_per_preprocessing_variant_first(params_factory):
    grid = sw.parse_grid(["preprocess.ngram_max=1,2", "train.learning_rate=0.3,0.6,-1"])
    plan = sw.plan_sweep(params_factory(), grid, sweep_id="sweep-unit", env={})
    assert [c.name for c in plan.configs] == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert [c.model_id for c in plan.configs if c.error is None] == [f"sweep-unit-c{i}" for i in (1, 2, 4, 5)]
    invalid = [c for c in plan.configs if c.error]
    assert [c.name for c in invalid] == ["c3", "c6"] and "train.learning_rate" in invalid[0].error
    assert plan.waves == [[1, 4], [2, 5]]
    assert len({plan.config(1).group, plan.config(4).group}) == 2 and plan.config(1).group == plan.config(2).group
    with pytest.raises(ParamsError, match="no configuration of the sweep is valid"):
        sw.plan_sweep(params_factory(), {"train.learning_rate": [-1, -2]}, env={})


def test_model_ids_inside_a_build_and_outside():
    env = {"BUILDKITE_BUILD_NUMBER": "42", "BUILDKITE_PIPELINE_SLUG": "trainkite"}
    assert sw.sweep_ids(None, env) == ("sweep-trainkite-42", "trainkite-42")
    assert sw.sweep_ids("sweep-trainkite-42", env) == ("sweep-trainkite-42", "trainkite-42")
    sid, prefix = sw.sweep_ids(None, {})
    assert sid.startswith("sweep-") and prefix == sid
    assert sw.sweep_ids("mine", {}) == ("sweep-mine", "sweep-mine")


def test_leaderboard_ranks_by_the_primary_metric_and_marks_the_best(params_factory):
    plan = sw.plan_sweep(params_factory(), {"train.learning_rate": [0.1, 0.2, -1, 0.4]}, sweep_id="s", env={})
    outcomes = [
        sw.ConfigOutcome(index=1, status="completed", metrics={"evaluation_macro_f1": 0.5, "test_macro_f1": 0.9}),
        sw.ConfigOutcome(index=2, status="completed", metrics={"evaluation_macro_f1": 0.7}),
        sw.ConfigOutcome(index=4, status="failed", error="RuntimeError: boom"),
    ]
    record = sw.sweep_record(plan, outcomes)
    assert [(r["config_id"], r["status"]) for r in record["rows"]] == [
        ("c2", "completed"),
        ("c1", "completed"),
        ("c4", "failed"),
        ("c3", "invalid"),
    ]
    assert [r["candidate"] for r in record["rows"]] == [True, False, False, False]
    assert record["candidate"]["model_id"] == "sweep-s-c2" and record["candidate"]["score"] == 0.7
    assert record["rows"][2]["error"] == "RuntimeError: boom" and record["counts"]["invalid"] == 1


def test_deployment_request_tags_and_names_each_run(params_factory):
    from flows.sweep_steps import deployment_request

    plan = sw.plan_sweep(params_factory(), {"train.learning_rate": [0.1, 0.2]}, sweep_id="sweep-gpu", env={})
    req = deployment_request(plan.config(2), plan.sweep_id, "train/train-ecs-gpu")
    assert req["name"] == "train/train-ecs-gpu" and req["tags"] == ["sweep-gpu"]
    assert req["parameters"]["model_id"] == req["flow_run_name"] == "sweep-gpu-c2"
    assert req["parameters"]["params"]["train"]["learning_rate"] == 0.2 and req["parameters"]["tags"] == ["sweep-gpu"]
    assert req["idempotency_key"] == "sweep-gpu-c2" and req["timeout"] is None


# --- real sweeps ---------------------------------------------------------------------------------------------


def _task_states(flow_run_ids: list[str]) -> dict[str, list[str]]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
    out: dict[str, list[str]] = {}
    for r in runs:
        out.setdefault(r.name.rsplit("-", 1)[0], []).append(r.state.name)
    return out


def test_2x2_sweep_preprocesses_once_per_variant_and_ranks_four_runs(prefect_api, tk_home, params_factory):
    from prefect import get_client

    from flows.sweep import sweep

    state = sweep(
        params=params_factory(),
        grid={"preprocess.ngram_max": [1, 2], "train.learning_rate": [0.3, 0.6]},
        max_parallel=2,
        return_state=True,
    )
    record = state.result()
    sid = record["sweep_id"]
    rows = record["rows"]
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {r["model_id"] for r in rows} == {f"{sid}-c{i}" for i in range(1, 5)}
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True) and rows[0]["score_key"] == "evaluation_macro_f1"
    assert [r["candidate"] for r in rows] == [True, False, False, False]
    assert record["candidate"]["model_id"] == rows[0]["model_id"]

    run_ids = [r["flow_run_id"] for r in rows]
    assert sorted(_task_states(run_ids)["preprocess"]) == ["Cached", "Cached", "Completed", "Completed"]
    with get_client(sync_client=True) as c:
        runs = [c.read_flow_run(i) for i in run_ids]
        arts = [a for a in run_artifacts(c, state.state_details.flow_run_id) if a.key == "sweep-leaderboard"]
    # Each configuration is its own train flow run, a child of the sweep, tagged with the sweep ID.
    assert all(r.parent_task_run_id and sid in r.tags and r.name.startswith(sid) for r in runs)
    assert len(arts) == 1
    table = json.loads(arts[0].data) if isinstance(arts[0].data, str) else arts[0].data
    assert len(table) == 4 and table[0]["candidate"] == "yes" and table[0]["model_id"] == rows[0]["model_id"]

    stored = sw.read_record(open_store(), sid)
    assert stored["candidate"] == record["candidate"] and len(stored["rows"]) == 4


def test_failing_configurations_are_reported_without_stopping_the_rest(prefect_api, tk_home, tmp_path):
    out_csv = tmp_path / "board.csv"
    proc = tk(
        "sweep",
        "--grid",
        "train.learning_rate=0.5,-1",
        "--grid",
        f"data.query={GOOD_QUERY},{EMPTY_QUERY}",
        "--set",
        "train.epochs=2",
        "--set",
        "preprocess.buckets=4096",
        "--set",
        "model.embedding_dim=16",
        "--set",
        "tracking.backend='none'",
        "--max-parallel",
        "2",
        "--csv",
        str(out_csv),
        "--json",
        env={"TRAINKITE_HOME": str(tk_home)},
    )
    record = json.loads(proc.stdout)
    assert record["counts"] == {"completed": 1, "failed": 1, "invalid": 2}
    by_status = {r["status"]: r for r in record["rows"]}
    assert record["rows"][0]["candidate"] and record["rows"][0]["config"]["train.learning_rate"] == 0.5
    assert "no rows" in by_status["failed"]["error"] and by_status["failed"]["flow_run_id"]
    assert "greater than 0" in by_status["invalid"]["error"]
    with open(out_csv, newline="") as f:
        board = list(csv.DictReader(f))
    assert [r["status"] for r in board] == ["completed", "failed", "invalid", "invalid"]
    assert board[0]["candidate"] == "yes" and board[0]["model_id"] == record["candidate"]["model_id"]
