"""A SIGTERM (ECS stopping a task, a cancel from the Prefect UI) or Ctrl-C while DuckDB runs a statement ends
the step as that signal, not as DuckDB's RuntimeError("Query interrupted"), which fetch_data's retries retried.
Real DuckDB statements, Prefect's own SIGTERM bridge, and `trainkite train` as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pytest
from prefect.exceptions import TerminationSignal
from prefect.utilities.engine import capture_sigterm

from tasks.duckdb_signals import interrupt_on_signal, signals_kept
from tests.conftest import REPO
from tests.process_helpers import finish, wait_for

# Minutes of work that DuckDB checks for interrupts often (an aggregation; a plain scan checks rarely).
LONG = "SELECT count(*) FROM (SELECT hash(i) % 100000000 AS k FROM range(2000000000) t(i) GROUP BY k)"


def _signal_soon(signum: int, after: float = 0.5) -> threading.Timer:
    timer = threading.Timer(after, os.kill, (os.getpid(), signum))
    timer.start()
    return timer


def _long_statement(spill, net_after: float = 20) -> None:
    con = interrupt_on_signal(duckdb.connect(config={"memory_limit": "300MB", "temp_directory": str(spill)}))
    # A safety net, so that a failing test fails in seconds: it interrupts with DuckDB's own error.
    net = threading.Timer(net_after, con.interrupt)
    net.start()
    try:
        con.execute(LONG).fetchall()
    finally:
        net.cancel()
        con.close()


def test_duckdb_drops_what_a_signal_handler_raised_which_is_why_the_wrapper_exists(tmp_path):
    # What comes out is DuckDB's own error (here the safety net's: the statement ran on), never the
    # TerminationSignal Prefect's handler raised.
    with capture_sigterm(), pytest.raises(RuntimeError, match="interrupted"):
        _signal_soon(signal.SIGTERM)
        _long_statement(tmp_path, net_after=3)


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, TerminationSignal), (signal.SIGINT, KeyboardInterrupt)])
def test_inside_signals_kept_the_handlers_exception_ends_the_statement(signum, raised, tmp_path):
    started = time.monotonic()
    with capture_sigterm(), pytest.raises(raised):
        with signals_kept():
            _signal_soon(signum)
            _long_statement(tmp_path)
    # The connection is interrupted by the signal itself, not by the safety net at 20 s.
    assert time.monotonic() - started < 15
    # The handlers are back as they were: Python's own for SIGINT.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_after_the_statement_still_ends_the_block_and_plain_errors_pass_through():
    with pytest.raises(KeyboardInterrupt), signals_kept():
        try:
            _signal_soon(signal.SIGINT, after=0.0).join()
            time.sleep(0.2)
        except KeyboardInterrupt:
            pass  # code that swallows it, as DuckDB does
    with pytest.raises(ValueError, match="plain"), signals_kept():
        raise ValueError("plain")


def test_sigterm_during_the_fetch_ends_the_run_as_crashed_without_a_retry(tmp_path, prefect_api):
    # A query that is one long DuckDB statement (seconds of GROUP BY before its first row): the signal lands
    # inside it, not in the Python that writes its batches.
    src = tmp_path / "src"
    src.mkdir()
    duckdb.execute(
        "COPY (SELECT 'comment ' || i || ' about ' || (i * 7919 % 100003) AS text, "
        "CASE WHEN i % 3 = 0 THEN 'negative' ELSE 'positive' END AS label FROM range(3000000) t(i)) "
        f"TO '{src / 't.parquet'}' (FORMAT parquet)"
    )
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    sets = [
        f'data.path="{src}"',
        'data.query="SELECT text, any_value(label) AS label FROM t, range(300) r(k) GROUP BY text"',
        "data.labels=['negative','positive']",
        "evaluation.query=''",
        "evaluation.primary_metric='accuracy'",
        "tracking.backend='none'",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", *[a for s in sets for a in ("--set", s)]],
        cwd=REPO,
        text=True,
        env={**os.environ, "TRAINKITE_HOME": str(tmp_path / "home"), "TMPDIR": str(scratch)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_for("the fetch", lambda: list(scratch.glob("trainkite-fetch-*")), 240, interval=0.1, proc=proc)
    time.sleep(1.5)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc, 60)
    assert time.monotonic() - signalled < 30, err  # inside ECS's default 30 s stop timeout
    assert rc == -signal.SIGTERM, err
    assert "aborted by a termination signal" in err and "Crashed" in err, err
    assert "fetch_data   done" not in err and "Retrying" not in err and "query failed" not in err, err
    assert not list(scratch.glob("trainkite-fetch-*"))  # the fetch's scratch is gone
