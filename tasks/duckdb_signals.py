"""A signal that arrives while DuckDB runs a statement ends the step as the signal would.

DuckDB checks for pending signals while it executes (that is what lets Ctrl-C stop a long query): it runs the
Python handler, stops the query and reports RuntimeError("Query interrupted"), dropping whatever the handler
raised. Under Prefect that is TerminationSignal, the SIGTERM of an ECS task being stopped or of a cancel from
the UI; at the terminal, KeyboardInterrupt. The step then failed with an ordinary error, which fetch_data's
retries retried: the run trained on until the SIGKILL at the end of the stop timeout, with no hook left to
release its Buildkite build. `signals_kept` remembers what the handler raised and raises that instead.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager, suppress
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The connections of the active `signals_kept` scopes (innermost last): a signal interrupts them itself, because
# DuckDB does not always stop on an exception from the handler (measured: a statement ran on after it).
_scopes: list[list] = []


def interrupt_on_signal(con):
    """Have a SIGTERM/SIGINT inside the current `signals_kept` scope interrupt `con` (a DuckDB connection)."""
    if _scopes:
        _scopes[-1].append(con)
    return con


@contextmanager
def signals_kept() -> Iterator[None]:
    """Within the block, an exception that a SIGTERM or SIGINT handler raised is what leaves the block, whatever
    DuckDB (or code wrapping its errors) turned it into. Only Python-level handlers are wrapped: a default or
    ignored disposition never reaches Python. Outside the main thread, where handlers cannot be set, a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[BaseException] = []
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    wrapped = {s: h for s, h in previous.items() if callable(h)}
    connections: list = []

    def handler(signum, frame):
        for con in connections:
            with suppress(Exception):  # closed meanwhile: nothing to stop
                con.interrupt()
        try:
            wrapped[signum](signum, frame)
        except BaseException as err:
            raised.append(err)
            raise

    for s in wrapped:
        signal.signal(s, handler)
    _scopes.append(connections)
    try:
        yield
    except Exception:
        if raised:
            raise raised[0] from None
        raise
    finally:
        _scopes.remove(connections)
        for s in wrapped:
            signal.signal(s, previous[s])
    if raised:  # the statement finished before it saw the interruption: the signal still ends the step
        raise raised[0]
