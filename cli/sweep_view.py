"""The live view of `trainkite sweep`: one line per configuration with its state, instead of every log line
of every concurrent train run interleaved. All log lines still reach the Prefect UI; `--verbose` prints them.

On a terminal the lines are a live table updated in place; otherwise each configuration prints a line when
it starts and when it ends.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from rich.live import Live
from rich.table import Table

from cli.main import _console_handlers, err

_FINISHED = re.compile(r"^Finished in state (\w+)")
_BEGINNING = re.compile(r"^Beginning (?:sub)?flow run '([^']+)'")


class SweepView(logging.Filter):
    def __init__(self, plan: Any):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        for c in plan.configs:
            values = " ".join(f"{k}={v}" for k, v in c.overrides.items())
            state = "refused: " + c.error if c.error else "queued"
            self.rows[c.model_id or c.name] = {"config": c.name, "values": values, "state": state, "detail": ""}
        self.lock = threading.Lock()
        self.live: Live | None = None
        self.handlers: list[logging.Handler] = []

    def __enter__(self) -> SweepView:
        if err.is_terminal:
            self.live = Live(self._table(), console=err, refresh_per_second=4, transient=False)
            self.live.__enter__()
        else:
            for key, row in self.rows.items():
                self._print(key, row)
        self.handlers = _console_handlers()
        for h in self.handlers:
            h.addFilter(self)
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handlers:
            h.removeFilter(self)
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def _table(self) -> Table:
        t = Table("config", "model ID", "values", "state", "", box=None, pad_edge=False)
        for key, r in self.rows.items():
            t.add_row(r["config"], key, r["values"], r["state"], r["detail"])
        return t

    def _print(self, key: str, row: dict[str, str]) -> None:
        err.print(
            f"  {row['config']:<4} {key}  {row['values']}  {row['state']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    def _set(self, key: str, state: str | None = None, detail: str | None = None) -> None:
        with self.lock:
            row = self.rows[key]
            changed = state is not None and state != row["state"]
            if state is not None:
                row["state"] = state
            if detail is not None:
                row["detail"] = detail
            if self.live is not None:
                self.live.update(self._table())
            elif changed:
                self._print(key, row)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        # A subflow's start is logged by its parent's logger; the message names the new run.
        if (begun := _BEGINNING.match(msg)) and begun.group(1) in self.rows:
            self._set(begun.group(1), "running")
            return False
        key = getattr(record, "flow_run_name", None)
        if key not in self.rows:
            return record.levelno >= logging.WARNING
        if record.name == "prefect.flow_runs":
            if m := _FINISHED.match(msg):
                self._set(key, m.group(1).lower())
        elif record.name.startswith("trainkite.train") and msg.startswith("epoch "):
            self._set(key, detail=" ".join(msg.split()[:2]) + "  " + " ".join(msg.split()[4:8]))
        elif "early stopping at" in msg:
            self._set(key, detail=msg.split(":", 1)[0])
        elif record.levelno >= logging.WARNING:
            self._set(key, detail=msg[:80])
        return False
