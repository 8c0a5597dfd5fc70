"""A build canceled in Buildkite stops its training run (no Prefect here).

Buildkite tells nobody: the launch step has exited and a block step runs no process. So while a
run trains for a build, a thread asks Buildkite for the build's state every `interval` seconds
(one GET a minute per run by default, far under a token's 50 a minute). A canceled build's block
step can never be unblocked (422 "Jobs from canceled builds cannot be unblocked"), so when the
build is `canceling` or `canceled` the watch calls `on_canceled` once, and the flow cancels itself
instead of training for hours for nobody.

Only these two states count: a build waiting at a block step keeps its earlier `state` (even
`passed`), and a failed read (network, 5xx, 429 after the client's retries) is logged and asked
again, never taken for a cancel.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from trainkite.errors import UserInputError

log = logging.getLogger("trainkite.build_watch")

CANCELED_STATES = frozenset({"canceling", "canceled"})
WATCH_SECONDS_ENV = "TRAINKITE_BUILD_WATCH_SECONDS"
DEFAULT_WATCH_SECONDS = 60.0


def watch_interval(env: Mapping[str, str] | None = None) -> float:
    """Seconds between two looks at the build; 0 turns the watch off."""
    raw = (os.environ if env is None else env).get(WATCH_SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_WATCH_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise UserInputError(
            f"{WATCH_SECONDS_ENV}={raw!r} is not a number of seconds (0 turns the watch off)"
        ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise UserInputError(f"{WATCH_SECONDS_ENV}={raw!r} must be 0 (off) or a positive number of seconds")
    return seconds


def canceled_reason(build: Mapping[str, Any]) -> str | None:
    """Why the run should stop, if the build was canceled; None while it can still take the unblock."""
    state = build.get("state")
    if state not in CANCELED_STATES:
        return None
    why = f"Buildkite build #{build.get('number')} was {state}"
    if build.get("cancel_reason"):
        why += f" ({build['cancel_reason']})"
    return why + ": nothing waits for this model any more"


class BuildWatch:
    """Looks at a build every `interval` seconds in a daemon thread; calls `on_canceled(reason)` at most once."""

    def __init__(
        self,
        get_build: Callable[[], Mapping[str, Any]],
        on_canceled: Callable[[str], None],
        interval: float,
        label: str = "the build",
    ):
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._get_build, self._on_canceled, self.interval, self.label = get_build, on_canceled, interval, label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trainkite-build-watch", daemon=True)
        self.reason: str | None = None

    def __enter__(self) -> BuildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # A look in flight finishes on its own (daemon thread); the run does not wait for Buildkite.
        self._thread.join(timeout=1)

    def _run(self) -> None:
        # The build was just launched: the first look is one interval in.
        while not self._stop.wait(self.interval):
            try:
                reason = canceled_reason(self._get_build())
            except Exception as err:
                log.warning("could not read %s (asking again in %gs): %s", self.label, self.interval, err)
                continue
            if reason is None or self._stop.is_set():
                continue
            self.reason = reason
            log.warning("%s; stopping this run", reason)
            try:
                self._on_canceled(reason)
            except Exception as err:
                log.error("could not stop this run after %s: %s", reason, err)
            return
