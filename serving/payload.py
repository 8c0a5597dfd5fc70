"""Turn an /invocations request body into a list of texts, or refuse it with a status and a message.

Plain functions over bytes and headers (no Starlette), so every refusal is testable without a server.
"""

from __future__ import annotations

import csv
import json
import os

from trainkite.errors import UserInputError

# SageMaker's real-time cap (botocore's sagemaker-runtime `Body` max): anything larger never reaches a
# real endpoint, so the local server refuses it the same way.
MAX_BODY_BYTES = 6 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 256
MAX_INSTANCES_ENV = "TRAINKITE_MAX_INSTANCES"
ACCEPTED = "application/json ({\"instances\": [\"text\", ...]}) or text/csv (one text per line, UTF-8)"


class PayloadError(Exception):
    """A request the client must change; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def max_instances_from_env(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    raw = env.get(MAX_INSTANCES_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_MAX_INSTANCES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserInputError(f"{MAX_INSTANCES_ENV}={raw!r}: must be a whole number >= 1 "
                             f"(default {DEFAULT_MAX_INSTANCES})")
    return value


def check_declared_length(header: str | None, cap: int = MAX_BODY_BYTES) -> None:
    """Refuse on Content-Length alone, before reading a byte of an oversized body."""
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError:
        raise PayloadError(400, f"Content-Length {header!r} is not a number") from None
    if declared > cap:
        raise PayloadError(413, too_large(declared, cap))


def too_large(size: int | str, cap: int = MAX_BODY_BYTES) -> str:
    return (f"request body is {size} bytes; the limit is {cap} bytes (6 MiB, SageMaker's real-time cap): "
            "send fewer or shorter texts per request")


def media_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    if not content_type:
        return "", {}
    main, *rest = content_type.split(";")
    params = {}
    for part in rest:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"').lower()
    return main.strip().lower(), params


def parse_instances(body: bytes, content_type: str | None, max_instances: int) -> list[str]:
    kind, params = media_type(content_type)
    if kind == "application/json":
        texts = _from_json(body)
    elif kind == "text/csv":
        charset = params.get("charset", "utf-8")
        if charset not in ("utf-8", "utf8"):
            raise PayloadError(415, f"text/csv charset {charset!r} is not supported; send UTF-8")
        texts = _from_csv(body)
    else:
        shown = content_type if content_type else "(none)"
        raise PayloadError(415, f"unsupported Content-Type {shown}; send {ACCEPTED}")
    if not texts:
        raise PayloadError(400, "instances is empty: send at least one text")
    if len(texts) > max_instances:
        raise PayloadError(413, f"{len(texts)} instances in one request; the limit is {max_instances} "
                                f"({MAX_INSTANCES_ENV}): split the batch")
    return texts


def _json_type(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return "a string"


def _from_json(body: bytes) -> list[str]:
    try:
        doc = json.loads(body)
    except RecursionError:
        raise PayloadError(400, "malformed JSON: nested too deeply; send {\"instances\": [\"text\", ...]}") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise PayloadError(400, f"malformed JSON: {err}") from None
    if not isinstance(doc, dict):
        raise PayloadError(400, f"the body is {_json_type(doc)}; send a JSON object {{\"instances\": [\"text\", ...]}}")
    if "instances" not in doc:
        raise PayloadError(400, "missing key 'instances'; send {\"instances\": [\"text\", ...]}")
    extra = sorted(k for k in doc if k != "instances")
    if extra:
        raise PayloadError(400, f"unknown key(s) {', '.join(map(repr, extra))}; the body takes only 'instances'")
    instances = doc["instances"]
    if not isinstance(instances, list):
        raise PayloadError(400, f"instances is {_json_type(instances)}; it must be an array of strings")
    for i, item in enumerate(instances):
        if not isinstance(item, str):
            raise PayloadError(400, f"instances[{i}] is {_json_type(item)}; every instance must be a string")
    try:
        "".join(instances).encode()
    except UnicodeEncodeError:
        # JSON can spell lone surrogates ("\ud800"); they are not text and cannot be featurized.
        bad = next(i for i, item in enumerate(instances) if not _is_utf8(item))
        raise PayloadError(400, f"instances[{bad}] contains an unpaired UTF-16 surrogate escape; "
                                "send valid Unicode text") from None
    return instances


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _from_csv(body: bytes) -> list[str]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PayloadError(400, f"text/csv body is not valid UTF-8 (byte {err.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    out = []
    for n, line in enumerate(lines, start=1):
        line = line.removesuffix("\r")
        # A quoted line is one CSV field (what a CSV writer emits for texts with commas or quotes);
        # anything else is taken verbatim, so unquoted commas stay part of the text.
        if line.startswith('"'):
            fields = next(csv.reader([line]), [""])
            if len(fields) != 1:
                raise PayloadError(400, f"text/csv line {n} has {len(fields)} fields; send one text per line")
            line = fields[0]
        out.append(line)
    return out
