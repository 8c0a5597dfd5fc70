"""The SageMaker container contract as a plain Starlette app: `GET /ping`, `POST /invocations`.

The model loads in a background thread started from the lifespan, so uvicorn binds the socket at
once (SageMaker wants connections accepted within 250 ms) and `/ping` answers 503 until the model's
hashes are verified and its weights loaded. Heavy imports (torch) happen in that thread too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from serving.http_timeouts import BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S, timeout_from_env
from serving.payload import (
    MAX_BODY_BYTES,
    PayloadError,
    check_declared_length,
    check_finite,
    max_instances_from_env,
    parse_instances,
    render_csv,
    response_format,
    too_large,
)
from trainkite.errors import TrainkiteError

log = logging.getLogger("trainkite.serving")

DEFAULT_MODEL_DIR = "/opt/ml/model"
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
# Bodies up to this size are parsed and scored on the event loop (cheaper than a thread hop, well under
# a millisecond); larger ones go to a worker thread so /ping keeps answering within its 2 s timeout.
INLINE_BODY_BYTES = 64 * 1024
# Set by the entrypoint for the worker processes it starts.
READY_DIR_ENV, WORKERS_ENV = "TRAINKITE_READY_DIR", "TRAINKITE_WORKERS"


def _json(obj: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


class ModelSlot:
    """The one model this process serves, and where loading it stands."""

    def __init__(self, load, ready_dir: str | None = None, workers: int = 1):
        self._load = load
        # With several worker processes, each loads its own copy; the folder holds one file per loaded worker.
        self.ready_dir, self.workers = ready_dir, workers
        self.status = "loading"
        self.error: str | None = None
        self.predictor = None
        self.model_id: str | None = None

    def load_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self._run, name="trainkite-model-loader", daemon=True)
        thread.start()
        return thread

    def _run(self) -> None:
        try:
            predictor = self._load()
        except TrainkiteError as err:
            # Names the file that failed verification; the container log is what an operator reads.
            log.error("model failed to load: %s", err)
            self.error, self.status = str(err), "failed"
            return
        except Exception:
            log.exception("model failed to load")
            self.error, self.status = "model failed to load (see the container log)", "failed"
            return
        self.predictor, self.model_id = predictor, predictor.model_id
        if self.ready_dir:
            (Path(self.ready_dir) / str(os.getpid())).write_text(_started(os.getpid()))
        self.status = "ready"
        log.info(
            "model %s loaded from %s (%s); ready",
            predictor.model_id,
            predictor.folder,
            getattr(predictor, "backend", "torch"),
        )


def _started(pid: int) -> str:
    """When process `pid` started (clock ticks since boot; Linux), or "" where /proc has no answer."""
    try:
        # Field 22 of /proc/<pid>/stat, counted after the ")" that ends the (free-form) command name.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def loaded_workers(ready_dir: str) -> int:
    """Workers that loaded the model and are still alive. A worker uvicorn restarted after a crash leaves its
    predecessor's file behind: a dead pid, or a reused pid with another start time, does not count."""
    alive = 0
    for marker in Path(ready_dir).iterdir():
        try:
            pid = int(marker.name)
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            continue
        except PermissionError:  # alive, owned by another user
            pass
        try:
            recorded = marker.read_text()
        except OSError:
            continue
        if recorded == _started(pid):
            alive += 1
    return alive


def _loader(model_dir, model_id, store_root, expected_model_id):
    def load():
        # numpy / ONNX Runtime where the model allows (the lean image has no torch), else torch.
        from models.lean_predictor import load_predictor
        from trainkite.manifest import fetch_model, load_dir_manifest

        if model_dir is not None:
            folder = Path(model_dir)
            manifest = load_dir_manifest(folder)
        else:
            from trainkite.store import open_store

            folder, manifest = fetch_model(open_store(store_root), model_id)
        predictor = load_predictor(folder, manifest)
        if expected_model_id and predictor.model_id != expected_model_id:
            raise TrainkiteError(
                f"this container was deployed for model {expected_model_id} (TRAINKITE_MODEL_ID) "
                f"but the model files are {predictor.model_id}; refusing to serve them"
            )
        return predictor

    return load


def _limit_torch_threads(n: int) -> None:
    """Intra-op threads for inference, which runs on the event-loop thread (this one) and pool threads.

    torch.set_num_threads only binds the calling thread (OpenMP), so calling it in the loader thread would
    leave the serving threads on one spinning thread per core. Before torch is imported, the env var
    reaches every thread; after, set it here, on the event-loop thread.
    """
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)


async def _receive_body(receive, cap: int, timeout: float = DEFAULT_BODY_TIMEOUT_S) -> bytes | None:
    """The request body from ASGI messages; None when the client disconnected first. A body that is not all
    in within `timeout` seconds of its headers is refused (408): a slow or stalled client would otherwise hold
    the connection as long as it likes."""
    chunks: list[bytes] = []
    total = 0
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
        except TimeoutError:
            raise PayloadError(
                408, f"request body not received within {timeout:g} s ({BODY_TIMEOUT_ENV}); {total} bytes arrived"
            ) from None
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        # The declared length can be absent (chunked) or wrong: count the bytes actually received too.
        total += len(chunk)
        if total > cap:
            raise PayloadError(413, too_large(f"more than {cap}", cap))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _post_only(request: Request) -> Response:
    return _json({"error": "method not allowed: POST /invocations"}, 405, {"Allow": "POST"})


class ServingApp(Starlette):
    """Starlette for /ping and everything else; POST /invocations goes straight to its ASGI handler."""

    def __init__(self, invocations, **kwargs):
        super().__init__(**kwargs)
        self._invocations = invocations

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/invocations":
            await self._invocations(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(
    model_dir: str | Path | None = None,
    model_id: str | None = None,
    store_root: str | None = None,
    max_instances: int | None = None,
    *,
    expected_model_id: str | None = None,
    torch_threads: int | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    ready_dir: str | None = None,
    workers: int = 1,
) -> Starlette:
    """The serving app for one model: a folder (SageMaker's /opt/ml/model) or a model ID in a store.

    With neither, the folder is `$SM_MODEL_DIR` or /opt/ml/model. `max_instances` defaults to
    `$TRAINKITE_MAX_INSTANCES` or 256. `expected_model_id` (the container's TRAINKITE_MODEL_ID)
    makes a mismatched model fail to load instead of serving the wrong one.
    """
    if model_dir is None and model_id is None:
        model_dir = os.environ.get("SM_MODEL_DIR") or DEFAULT_MODEL_DIR
    limit = max_instances if max_instances is not None else max_instances_from_env()
    body_timeout = timeout_from_env(BODY_TIMEOUT_ENV, DEFAULT_BODY_TIMEOUT_S)
    if torch_threads:
        _limit_torch_threads(torch_threads)
    slot = ModelSlot(_loader(model_dir, model_id, store_root, expected_model_id), ready_dir, workers)

    def not_ready() -> Response:
        if slot.status == "failed":
            return _json({"status": "failed", "error": slot.error}, 503)
        return _json({"status": "loading", "error": "the model is still loading"}, 503)

    async def ping(request: Request) -> Response:
        if slot.status != "ready":
            return not_ready()
        if slot.ready_dir and (loaded := loaded_workers(slot.ready_dir)) < slot.workers:
            # Healthy only when every worker can answer: SageMaker sends traffic after the first 200.
            return _json(
                {"status": "loading", "error": f"{loaded} of {slot.workers} workers have loaded the model"}, 503
            )
        return _json({"status": "ok", "model_id": slot.model_id}, headers={"X-Model-Id": slot.model_id})

    def score(body: bytes, content_type: str | None, answer: tuple[str, bool] = ("json", False)) -> bytes:
        texts = parse_instances(body, content_type, limit)
        preds = slot.predictor.predict(texts)
        try:
            check_finite(preds)
        except ValueError:
            # NaN is not JSON: a model whose weights hold NaN (published before the divergence guard) must not
            # answer 200 with an unparseable body.
            log.error("model %s produced non-finite scores; its weights are broken", slot.model_id)
            raise PayloadError(
                500,
                f"model {slot.model_id} produced non-finite scores (its weights are broken; retrain and redeploy it)",
            ) from None
        if answer[0] == "csv":
            return render_csv(preds, slot.predictor.labels, header=answer[1])
        return json.dumps({"model_id": slot.model_id, "predictions": preds}, separators=(",", ":")).encode()

    async def invocations(scope, receive, send) -> None:
        """POST /invocations on plain ASGI: Starlette's routing, Request and Response cost about a third of
        what the model itself takes for one text, and this is the one hot path."""
        headers = dict(scope["headers"])
        extra: list[tuple[bytes, bytes]] = []
        attrs = headers.get(CUSTOM_ATTRIBUTES.encode())
        if attrs is not None:
            extra.append((b"x-amzn-sagemaker-custom-attributes", attrs))
        if slot.status != "ready":
            response = not_ready()
            response.headers.update({k.decode(): v.decode("latin-1") for k, v in extra})
            await response(scope, receive, send)
            return
        extra.append((b"x-model-id", slot.model_id.encode()))
        status, media = 200, b"application/json"
        try:
            accept = headers.get(b"accept")
            answer = response_format(None if accept is None else accept.decode("latin-1"))
            length = headers.get(b"content-length")
            check_declared_length(None if length is None else length.decode("latin-1"), max_body_bytes)
            body = await _receive_body(receive, max_body_bytes, body_timeout)
            if body is None:
                return  # the client went away
            ctype = headers.get(b"content-type")
            content_type = None if ctype is None else ctype.decode("latin-1")
            if len(body) <= INLINE_BODY_BYTES:
                out = score(body, content_type, answer)
            else:
                out = await run_in_threadpool(score, body, content_type, answer)
            if answer[0] == "csv":
                media = b"text/csv; charset=utf-8; header=" + (b"present" if answer[1] else b"absent")
        except PayloadError as err:
            status, out = err.status, json.dumps({"error": err.message}, separators=(",", ":")).encode()
            if status == 408:
                extra.append((b"connection", b"close"))
        except Exception:
            log.exception("POST /invocations failed")
            status, out = 500, b'{"error":"internal error"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", media), (b"content-length", str(len(out)).encode()), *extra],
            }
        )
        await send({"type": "http.response.body", "body": out})

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _json({"error": exc.detail}, exc.status_code, dict(exc.headers or {}))

    async def internal_error(request: Request, exc: Exception) -> Response:
        # The traceback goes to the log (uvicorn re-raises it there); the client learns nothing internal.
        return _json({"error": "internal error"}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        slot.load_in_background()
        yield

    app = ServingApp(
        invocations,
        routes=[Route("/ping", ping, methods=["GET"]), Route("/invocations", _post_only, methods=["GET"])],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )
    app.state.model = slot
    return app


def app_from_env() -> Starlette:
    """uvicorn factory for every worker process: the container's environment says what to serve."""
    threads = os.environ.get("TRAINKITE_TORCH_THREADS", "1")
    return create_app(
        model_dir=os.environ.get("SM_MODEL_DIR") or DEFAULT_MODEL_DIR,
        expected_model_id=os.environ.get("TRAINKITE_MODEL_ID") or None,
        torch_threads=int(threads) if threads.isdigit() and int(threads) > 0 else 1,
        ready_dir=os.environ.get(READY_DIR_ENV) or None,
        workers=int(os.environ.get(WORKERS_ENV, "1")),
    )
