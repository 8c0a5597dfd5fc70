"""The local Prefect server trainkite runs when PREFECT_API_URL is unset: template database, start, reuse, stop."""

from __future__ import annotations

import sqlite3
import subprocess

import pytest
import requests

from cli import prefect_server as ps


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_template_is_prefects_own_migrated_database_and_is_made_once(own_cache, tmp_path, monkeypatch):
    template = ps.prepare_database()
    assert template.parent == own_cache / "trainkite"
    with sqlite3.connect(template) as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert revision and {"flow_run", "task_run", "deployment", "work_pool"} <= tables
    assert not list(template.parent.glob("tmp*")), "no half-made template is left behind"

    def no_subprocess(*a, **k):
        raise AssertionError("a prepared template must not be migrated again")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert ps.prepare_database() == template

    home = tmp_path / "prefect-home"
    assert ps.seed_database(home) is True
    assert (home / "prefect.db").read_bytes() == template.read_bytes()
    (home / "prefect.db").write_bytes(b"the user's runs")
    assert ps.seed_database(home) is False, "an existing database is never replaced"
    assert (home / "prefect.db").read_bytes() == b"the user's runs"


def test_no_template_no_seed(own_cache, tmp_path):
    assert ps.seed_database(tmp_path / "ph") is False
    assert not (tmp_path / "ph" / "prefect.db").exists()


def test_begin_api_starts_in_the_background_and_ensure_api_waits_then_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINKITE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setattr(ps, "_pending", [])
    try:
        ps.begin_api()
        url = ps.ensure_api()
        assert url == ps.status()["url"]
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
        if ps.database_template().is_file():
            # started from the template: the same schema revision, no migrations run here
            with sqlite3.connect(ps.prefect_home() / "prefect.db") as db:
                assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        pid = ps.status()["pid"]
        assert ps.start(quiet=True)["pid"] == pid, "a running server is reused, not started twice"
    finally:
        assert ps.stop() is True
    assert ps.status() is None
    assert ps.stop() is False


def test_the_shipped_schema_is_what_prefects_own_migrations_make(tmp_path):
    """The snapshot a fresh install builds its template from (0.2 s) equals a real migration (15-20 s): same
    tables, indexes, triggers and rows, for the installed Prefect."""
    assert ps._snapshot_sql() is not None, (
        "cli/prefect_schema.sql is not for the installed Prefect: run `python -m cli.prefect_server --write-schema`"
    )
    shipped = tmp_path / "shipped.db"
    with sqlite3.connect(shipped) as db:
        db.executescript(ps.SCHEMA_SNAPSHOT.read_text())
    migrated = ps.migrate_empty_database(tmp_path / "migrated")
    # Compared as facts, not text: Prefect's table-rebuilding migrations order a table's constraints differently
    # from one run to the next.
    assert _schema_facts(shipped) == _schema_facts(migrated), "run `python -m cli.prefect_server --write-schema`"


def _schema_facts(path) -> dict:
    with sqlite3.connect(path) as db:
        objects = db.execute("SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
        facts: dict = {"objects": sorted(objects)}
        for kind, name, _ in objects:
            if kind == "table":
                facts[name] = {
                    "columns": sorted(db.execute(f'PRAGMA table_info("{name}")').fetchall()),
                    "foreign_keys": sorted(r[2:] for r in db.execute(f'PRAGMA foreign_key_list("{name}")')),
                    "indexes": sorted(r[1:] for r in db.execute(f'PRAGMA index_list("{name}")')),
                    "rows": sorted(map(repr, db.execute(f'SELECT * FROM "{name}"'))),
                }
            elif kind == "index":
                facts[name] = sorted(db.execute(f'PRAGMA index_xinfo("{name}")').fetchall())
            else:
                (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
                facts[name] = " ".join(sql.split())
    return facts


def test_an_unknown_prefect_version_migrates_instead(own_cache, monkeypatch, tmp_path):
    snapshot = tmp_path / "schema.sql"
    snapshot.write_text("-- prefect 0.0.1\nCREATE TABLE wrong (x);\n")
    monkeypatch.setattr(ps, "SCHEMA_SNAPSHOT", snapshot)
    template = ps.prepare_database()
    with sqlite3.connect(template) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "wrong" not in tables and {"flow_run", "alembic_version"} <= tables


def _events(url: str, run_id, names: list[str]) -> list[str]:
    r = requests.post(
        f"{url}/events/filter",
        json={
            "filter": {"event": {"name": names}, "resource": {"id": [f"prefect.flow-run.{run_id}"]}},
            "limit": 50,
        },
        timeout=10,
    )
    r.raise_for_status()
    return [e["event"] for e in r.json()["events"]]


@pytest.mark.parametrize("watched", [False, True])
def test_a_local_commands_flow_run_names_its_process_and_sends_heartbeats_only_when_watched(
    prefect_api, monkeypatch, watched
):
    """Prefect joins its heartbeat thread, which sleeps in 1 s steps, at every flow's end. A laptop's run is
    reaped through its pid tag, so it sends none; a Buildkite job's run (or one whose environment asks) does."""
    import time

    from prefect import flow, task

    if watched:
        monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    else:
        monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
        monkeypatch.delenv("BUILDKITE", raising=False)

    @task(name="probe-step")
    def step():
        return 1

    @flow(name="heartbeat-probe")
    def probe():
        return step()

    with ps.local_flow_run(probe) as run:
        state = run(return_state=True)
    run_id = state.state_details.flow_run_id
    deadline = time.monotonic() + 30
    seen: list[str] = []
    while time.monotonic() < deadline:  # events reach the server asynchronously; the final one comes last
        seen = _events(prefect_api, run_id, ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed"])
        if "prefect.flow-run.Completed" in seen and (not watched or "prefect.flow-run.heartbeat" in seen):
            break
        time.sleep(0.5)
    assert "prefect.flow-run.Completed" in seen
    assert ("prefect.flow-run.heartbeat" in seen) is watched, seen
    tags = requests.get(f"{prefect_api}/flow_runs/{run_id}", timeout=10).json()["tags"]
    assert ps.run_tag() in tags, "the flow run names its process"
    task_runs = requests.post(
        f"{prefect_api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [str(run_id)]}}}, timeout=10
    ).json()
    assert [t["name"].rsplit("-", 1)[0] for t in task_runs] == ["probe-step"]
    assert ps.run_tag() not in task_runs[0]["tags"], "a tagged task run asks the API for concurrency slots first"
