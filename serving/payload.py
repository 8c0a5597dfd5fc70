"""Turn an /invocations request body into a list of texts, or refuse it with a status and a message.

Plain functions over bytes and headers (no Starlette), so every refusal is testable without a server.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os

from trainkite.errors import UserInputError

# SageMaker's real-time cap (botocore's sagemaker-runtime `Body` max): anything larger never reaches a
# real endpoint, so the local server refuses it the same way.
MAX_BODY_BYTES = 6 * 1024 * 1024
DEFAULT_MAX_INSTANCES = 256
MAX_INSTANCES_ENV = "TRAINKITE_MAX_INSTANCES"
ACCEPTED = (
    'application/json ({"instances": ["text", ...]}) or text/csv (one text per record, UTF-8; '
    "a first record `text` is a header)"
)
ANSWERS = "application/json or text/csv"


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
        raise UserInputError(
            f"{MAX_INSTANCES_ENV}={raw!r}: must be a whole number >= 1 (default {DEFAULT_MAX_INSTANCES})"
        )
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
    return (
        f"request body is {size} bytes; the limit is {cap} bytes (6 MiB, SageMaker's real-time cap): "
        "send fewer or shorter texts per request"
    )


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
        header = params.get("header")
        if header not in (None, "present", "absent"):
            raise PayloadError(400, f"text/csv header={header!r}: use header=present or header=absent")
        texts = _from_csv(body, header)
    else:
        shown = content_type if content_type else "(none)"
        raise PayloadError(415, f"unsupported Content-Type {shown}; send {ACCEPTED}")
    if not texts:
        raise PayloadError(400, "instances is empty: send at least one text")
    if len(texts) > max_instances:
        raise PayloadError(
            413,
            f"{len(texts)} instances in one request; the limit is {max_instances} "
            f"({MAX_INSTANCES_ENV}): split the batch",
        )
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
        raise PayloadError(400, 'malformed JSON: nested too deeply; send {"instances": ["text", ...]}') from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise PayloadError(400, f"malformed JSON: {err}") from None
    if not isinstance(doc, dict):
        raise PayloadError(400, f'the body is {_json_type(doc)}; send a JSON object {{"instances": ["text", ...]}}')
    if "instances" not in doc:
        raise PayloadError(400, 'missing key \'instances\'; send {"instances": ["text", ...]}')
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
        raise PayloadError(
            400, f"instances[{bad}] contains an unpaired UTF-16 surrogate escape; send valid Unicode text"
        ) from None
    return instances


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _from_csv(body: bytes, header: str | None = None) -> list[str]:
    """One text per CSV record, as a CSV writer writes them: a quoted field may hold commas, doubled quotes and
    newlines (one record, one text); an unquoted line is taken verbatim, unquoted commas included; a blank line
    is an empty text, so outputs stay aligned with records.

    A header row is not a text: RFC 4180's `header=present` says there is one (and `header=absent` that there
    is none); without the parameter a first record that is exactly `text` is taken as the header. A header
    with several columns picks its `text` column from every record.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PayloadError(400, f"text/csv body is not valid UTF-8 (byte {err.start})") from None
    first_line = text.split("\n", 1)[0].removesuffix("\r")
    first = next(csv.reader([first_line]), [])
    if header == "present" or (header != "absent" and len(first) > 1 and "text" in first):
        return _csv_column(text)
    records = _csv_records(text)
    if header != "absent" and records and records[0].strip().lower() == "text":
        records = records[1:]
    return records


def _csv_records(text: str) -> list[str]:
    out: list[str] = []
    i, n, record = 0, len(text), 1
    while i < n:
        if text[i] == '"':
            start = i
            value, i = _quoted(text, i, record)
            end = _line_end(text, i)
            if text[i:end].removesuffix("\r"):
                fields = next(csv.reader(io.StringIO(text[start:end], newline="")), [])
                raise PayloadError(
                    400,
                    f"text/csv record {record} has {len(fields)} fields; send one text per "
                    "record (quote it, doubling any quote inside)",
                )
        else:
            end = _line_end(text, i)
            value = text[i:end].removesuffix("\r")
        out.append(value)
        i, record = end + 1, record + 1
    return out


def _line_end(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _quoted(text: str, i: int, record: int) -> tuple[str, int]:
    """The quoted field starting at text[i] == '"': (its value, the index after its closing quote)."""
    parts, j = [], i + 1
    while True:
        q = text.find('"', j)
        if q < 0:
            raise PayloadError(400, f"text/csv record {record}: a quoted text is never closed")
        parts.append(text[j:q])
        if q + 1 < len(text) and text[q + 1] == '"':
            parts.append('"')
            j = q + 2
            continue
        return "".join(parts), q + 1


def _csv_column(text: str) -> list[str]:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return []
    names = [c.strip() for c in rows[0]]
    if "text" in names:
        col = names.index("text")
    elif len(names) == 1:
        col = 0
    else:
        raise PayloadError(400, f"text/csv header has columns {names}; one must be named 'text'")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            out.append("")
            continue
        if len(row) != len(names):
            raise PayloadError(400, f"text/csv record {n} has {len(row)} fields; the header has {len(names)}")
        out.append(row[col])
    return out


def response_format(accept: str | None) -> tuple[str, bool]:
    """("json" | "csv", header row) for an Accept header; 406 when it names neither."""
    if not accept:
        return "json", False
    best: tuple[float, int, str, bool] | None = None
    for pos, item in enumerate(accept.split(",")):
        kind, params = media_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        if q <= 0:
            continue
        if kind in ("application/json", "application/*", "*/*", ""):
            fmt = "json"
        elif kind in ("text/csv", "text/*"):
            fmt = "csv"
        else:
            continue
        cand = (q, -pos, fmt, params.get("header") != "absent")
        if best is None or cand[:2] > best[:2]:
            best = cand
    if best is None:
        raise PayloadError(406, f"cannot answer in {accept!r}; Accept {ANSWERS}")
    return best[2], best[3]


def render_csv(predictions: list[dict], labels: list[str], header: bool = True) -> bytes:
    """One record per instance, in order: label, model_id, then a score column per class."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(["label", "model_id", *(f"score_{lab}" for lab in labels)])
    for p in predictions:
        w.writerow([p["label"], p["model_id"], *(repr(float(p["scores"][lab])) for lab in labels)])
    return buf.getvalue().encode()


def check_finite(predictions: list[dict]) -> None:
    """NaN/inf are not JSON (nor probabilities): a model that produces them is broken, never answered with."""
    for p in predictions:
        if not all(math.isfinite(v) for v in p["scores"].values()):
            raise ValueError("non-finite score")
