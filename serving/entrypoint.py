"""`trainkite-container`: the image's ENTRYPOINT.

`serve` (what SageMaker passes) starts the HTTP server; anything else is exec'd as a command, so
the same image also runs `prefect flow-run execute ...` for training.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

USAGE = "usage: trainkite-container serve | trainkite-container COMMAND [ARGS...]"
# SageMaker sends SIGKILL 30 s after SIGTERM; finish in-flight requests well before that.
GRACEFUL_SHUTDOWN_S = 20
MAX_DEFAULT_WORKERS = 8


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        print(f"trainkite-container: {name}={raw!r} must be a whole number >= {minimum}", file=sys.stderr)
        raise SystemExit(2)
    return int(raw)


def log_config() -> dict:
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg["loggers"]["trainkite"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return cfg


def _exit_cleanly(signum, frame) -> None:
    raise SystemExit(0)


def run_server(
    model_dir: str | Path, *, host: str, port: int, workers: int = 1, expected_model_id: str | None = None
) -> None:
    """uvicorn over `serving.app:app_from_env`; each worker process reads the model folder from the env."""
    import uvicorn

    from serving.http_timeouts import check_timeouts

    check_timeouts()  # a bad setting is one clear error here, not one per connection
    if threading.current_thread() is threading.main_thread():
        # uvicorn drains in-flight requests on SIGTERM/SIGINT, restores the previous handlers and re-raises
        # the signal; with Python's defaults the process would then die "killed by SIGTERM" after a clean
        # shutdown. Exiting 0 here is what that clean shutdown means (and covers a signal during startup).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
    os.environ["SM_MODEL_DIR"] = str(model_dir)
    from serving.app import READY_DIR_ENV, WORKERS_ENV

    if workers > 1:
        os.environ[READY_DIR_ENV] = tempfile.mkdtemp(prefix="trainkite-ready-")
        os.environ[WORKERS_ENV] = str(workers)
    if expected_model_id:
        os.environ["TRAINKITE_MODEL_ID"] = expected_model_id
    try:
        uvicorn.run(
            "serving.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            log_config=log_config(),
            access_log=os.environ.get("TRAINKITE_ACCESS_LOG", "") == "1",
            server_header=False,
            lifespan="on",
            # An import string, not the class: each worker imports it after its health-check pipe is up
            # (a class would be unpickled, uvicorn imported with it, first: seconds on a loaded host).
            http="serving.http_timeouts:PROTOCOL",
        )
    finally:
        if workers > 1:
            shutil.rmtree(os.environ[READY_DIR_ENV], ignore_errors=True)


def serve() -> None:
    # Validate before uvicorn starts so a bad setting is one clear line, not a traceback per worker.
    from serving.http_timeouts import check_timeouts
    from serving.payload import max_instances_from_env
    from trainkite.errors import UserInputError

    try:
        max_instances_from_env()
        check_timeouts()
    except UserInputError as err:
        print(f"trainkite-container: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    port = _env_int("SAGEMAKER_BIND_TO_PORT", 8080)
    # One worker per usable CPU, as SageMaker's own model servers do (SAGEMAKER_MODEL_SERVER_WORKERS): a
    # worker is one Python process, and a batch-1 request is mostly Python. Each holds its own copy of the
    # model (about 320 MB with torch), hence the cap.
    default_workers = _env_int("SAGEMAKER_MODEL_SERVER_WORKERS", min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS))
    workers = _env_int("TRAINKITE_SERVE_WORKERS", default_workers)
    model_dir = os.environ.get("SM_MODEL_DIR") or "/opt/ml/model"
    run_server(model_dir, host="0.0.0.0", port=port, workers=workers)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        raise SystemExit(0 if args else 2)
    if args[0] == "serve":
        if len(args) > 1:
            print(
                f"trainkite-container: `serve` takes no arguments (got {' '.join(args[1:])}); "
                "configure it with SM_MODEL_DIR, SAGEMAKER_BIND_TO_PORT, TRAINKITE_SERVE_WORKERS "
                "(default: one per CPU, at most 8)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        serve()
        return
    try:
        os.execvp(args[0], args)
    except OSError as err:
        print(f"trainkite-container: cannot run {args[0]!r}: {err.strerror}", file=sys.stderr)
        raise SystemExit(127) from None


if __name__ == "__main__":
    main()
