"""A local Buildkite REST API (real HTTP on 127.0.0.1) for tests.

Implements the contract in shared/reference/buildkite.md section 1: Bearer tokens with scopes
and expiry, builds with jobs made from a list of steps, the block-step ("manual" job) unblock
that merges fields into build meta-data, annotations, cancel, `RateLimit-*` headers, plus
scripted faults (429/5xx, delays, dropped connections) and a log of every request.

    fake = FakeBuildkite().start()
    fake.add_token("bk-test-token")
    number = fake.create_build("acme", "trainkite")
    client = BuildkiteClient("bk-test-token", fake.url, "acme", "trainkite")
    client.unblock(number, "training_finished", {"model-id": "trainkite-1"})
    fake.build("acme", "trainkite", number)["meta_data"]
    fake.stop()

Where the reference marks behaviour as inferred, the fake follows the inference and says so.
The fake is stricter than Buildkite in one place: unblock field values must be JSON strings
(the reference says to always send strings; this catches clients that don't).
Private endpoints for the fake agent live under `/_fake/` (not part of Buildkite's API).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

UNAUTHORIZED = (
    "Authentication required. Please supply a valid API Access Token: "
    "https://buildkite.com/docs/apis/rest-api#authentication"
)
NOT_BLOCKED = "The job's state must be blocked"
CANCELED_UNBLOCK = "Jobs from canceled builds cannot be unblocked"
ORG_LIMIT, USER_LIMIT = 200, 50
ANNOTATION_STYLES = ("success", "info", "warning", "error")
FINISHED_BUILD_STATES = ("passed", "failed", "canceled", "skipped", "not_run")

DEFAULT_STEPS: list[dict[str, Any]] = [
    {"key": "launch_training", "type": "script", "label": ":rocket: Launch training"},
    {"key": "training_finished", "type": "manual", "label": ":hourglass: Training finished"},
    {"key": "report", "type": "script", "label": ":memo: Report"},
    {"key": "deploy", "type": "manual", "label": ":shipit: Deploy?"},
]

_BUILDS = r"/v2/organizations/(?P<org>[^/]+)/pipelines/(?P<pipeline>[^/]+)/builds"
_BUILD = _BUILDS + r"/(?P<number>\d+)"
# (method, path regex, handler name, scope needed; None = any valid token)
_ROUTES = [
    ("GET", r"/v2/access-token", "_access_token", None),
    ("GET", _BUILDS, "_list_builds", "read_builds"),
    ("POST", _BUILDS, "_create_build_api", "write_builds"),
    ("GET", _BUILD, "_get_build", "read_builds"),
    ("PUT", _BUILD + r"/cancel", "_cancel", "write_builds"),
    ("GET", _BUILD + r"/jobs", "_list_jobs", "read_builds"),
    ("GET", _BUILD + r"/jobs/(?P<job_id>[^/]+)", "_get_job", "read_builds"),
    ("PUT", _BUILD + r"/jobs/(?P<job_id>[^/]+)/unblock", "_unblock", "write_builds"),
    ("GET", _BUILD + r"/annotations", "_list_annotations", "read_builds"),
    ("POST", _BUILD + r"/annotations", "_create_annotation", "write_builds"),
    ("GET", "/_fake" + _BUILD[3:] + r"/meta-data", "_get_meta_data", None),
    ("POST", "/_fake" + _BUILD[3:] + r"/meta-data", "_set_meta_data", None),
    ("GET", _BUILD + r"/artifacts", "_list_artifacts", "read_artifacts"),
    ("POST", "/_fake" + _BUILD[3:] + r"/artifacts", "_upload_artifact", None),
]


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.body = status, {"message": message, **extra}


@dataclass
class Fault:
    """A scripted answer used for the next `times` requests matching `method` and `path` (regex)."""

    status: int | None = None  # None: after `delay`, answer normally
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0
    close: bool = False  # drop the connection without answering
    times: int = 1
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and (
            self.path is None or re.search(self.path, path) is not None
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _gid(kind: str, ident: str) -> str:
    return base64.b64encode(f"{kind}---{ident}".encode()).decode()


def _public(obj: Any) -> Any:
    """Deep copy without the fake's private (`_`-prefixed) keys."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    return copy.deepcopy(obj)


class FakeBuildkite:
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._lock = threading.RLock()
        self._tokens: dict[str, dict[str, Any]] = {}
        self._pipelines: dict[tuple[str, str], dict[str, Any]] = {}
        self._faults: list[Fault] = []
        self._log: list[dict[str, Any]] = []
        self._window = (0, {})  # (minute, {token-or-"*": count}) for RateLimit-* headers
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._httpd = ThreadingHTTPServer((self.host, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="fake-buildkite", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """The API base, like https://api.buildkite.com/v2."""
        return self.root_url + "/v2"

    # --------------------------------------------------------- test helpers

    def add_token(
        self,
        token: str,
        scopes: Iterable[str] = ("read_builds", "write_builds"),
        expired: bool = False,
        *,
        user: str = "trainkite-bot",
        teams: Iterable[str] = (),
    ) -> dict[str, Any]:
        """Register an API token; returns its user object (the `unblocked_by` of its unblocks)."""
        created = datetime.now(UTC)
        user_id = str(uuid.uuid4())
        record = {
            "uuid": str(uuid.uuid4()),
            "scopes": list(scopes),
            "description": f"fake token for {user}",
            "created_at": created.isoformat(),
            "expires_at": (created + (timedelta(days=-1) if expired else timedelta(days=7))).isoformat(),
            "user": {"name": user, "email": f"{user}@example.com"},
            "_expired": expired,
            "_teams": set(teams),
            "_user": {
                "id": user_id,
                "graphql_id": _gid("User", user_id),
                "name": user,
                "email": f"{user}@example.com",
                "avatar_url": "https://www.gravatar.com/avatar/0",
                "created_at": created.isoformat(),
            },
        }
        with self._lock:
            self._tokens[token] = record
        return copy.deepcopy(record["_user"])

    def add_pipeline(self, org: str, pipeline: str, steps: list[dict[str, Any]] | None = None) -> None:
        """Register a pipeline; `steps` (default DEFAULT_STEPS) become the jobs of builds made over REST."""
        with self._lock:
            entry = self._pipelines.setdefault((org, pipeline), {"builds": {}, "next": 1})
            entry["steps"] = copy.deepcopy(steps if steps is not None else DEFAULT_STEPS)

    def create_build(
        self,
        org: str,
        pipeline: str,
        steps: list[dict[str, Any]] | None = None,
        *,
        env: dict[str, str] | None = None,
        commit: str = "HEAD",
        branch: str = "main",
        message: str = "",
        meta_data: dict[str, str] | None = None,
        state: str = "running",
        source: str = "api",
    ) -> int:
        """Create a build (registering the pipeline if needed); returns its number.

        Each step is `{"key", "type": script|manual|waiter|trigger, "label"?, "state"?, "allowed_teams"?}`.
        Without a `state`, steps up to and including the first block step have run (script `passed`,
        manual `blocked`); later ones are `waiting` (inferred name for "not reached yet").
        """
        with self._lock:
            if (org, pipeline) not in self._pipelines:
                self.add_pipeline(org, pipeline)
            entry = self._pipelines[(org, pipeline)]
            steps = entry["steps"] if steps is None else steps
            return self._new_build(
                org,
                pipeline,
                steps,
                env or {},
                commit,
                branch,
                message,
                meta_data or {},
                state,
                source,
                creator=None,
            )

    def build(self, org: str, pipeline: str, number: int) -> dict[str, Any]:
        """The build as the API shows it, but with retried jobs too."""
        with self._lock:
            return _public(self._find_build(org, pipeline, number))

    def job(self, org: str, pipeline: str, number: int, step_key: str) -> dict[str, Any]:
        with self._lock:
            return _public(self._latest_job(self._find_build(org, pipeline, number), step_key))

    def set_job_state(self, org: str, pipeline: str, number: int, step_key: str, state: str) -> None:
        """Move a job along (e.g. the deploy block to `blocked` once earlier steps "ran")."""
        with self._lock:
            build = self._find_build(org, pipeline, number)
            job = self._latest_job(build, step_key)
            job["state"] = state
            if job["type"] == "manual":
                job["unblockable"] = state == "blocked"
            self._refresh_blocked(build)

    def retry_job(self, org: str, pipeline: str, number: int, step_key: str, state: str | None = None) -> str:
        """Mark the step's current job retried and add a fresh one; returns the new job id."""
        with self._lock:
            build = self._find_build(org, pipeline, number)
            old = self._latest_job(build, step_key)
            old["retried"] = True
            old["retries_count"] = old.get("retries_count", 0) + 1
            step = {
                "key": step_key,
                "type": old["type"],
                "label": old.get("label") or old.get("name"),
                "state": state or old["state"],
                "allowed_teams": sorted(old.get("_allowed_teams", ())),
            }
            new = self._make_job(org, pipeline, build["number"], step, step["state"])
            new["retry_source"] = {"job_id": old["id"], "retry_type": "manual"}
            build["jobs"].append(new)
            self._refresh_blocked(build)
            return new["id"]

    def set_build_state(self, org: str, pipeline: str, number: int, state: str) -> None:
        with self._lock:
            self._find_build(org, pipeline, number)["state"] = state

    def annotations(self, org: str, pipeline: str, number: int) -> list[dict[str, Any]]:
        """Annotations in creation order, each with its raw `body` besides the API fields."""
        with self._lock:
            found = self._find_build(org, pipeline, number)["_annotations"]
            return [{**_public(a), "body": a["_body"]} for a in found]

    def artifacts(self, org: str, pipeline: str, number: int) -> list[dict[str, Any]]:
        """Uploaded artifacts in upload order, each with its `content` (bytes) besides the API fields."""
        with self._lock:
            found = self._find_build(org, pipeline, number)["_artifacts"]
            return [{**_public(a), "content": a["_content"]} for a in found]

    def inject(
        self,
        status: int | None = None,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        delay: float = 0.0,
        close: bool = False,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
    ) -> Fault:
        """Script the next `times` matching requests: a status (429, 502...), a delay, or a dropped
        connection (`close=True`). `method` and `path` (a regex searched in the path) narrow the match.

        A delay without a status answers normally afterwards: the request still takes effect even
        if the client gave up waiting, as a slow real server's would.
        """
        fault = Fault(status, dict(headers or {}), body, delay, close, times, method, path)
        with self._lock:
            self._faults.append(fault)
        return fault

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request so far: method, path, query, headers (Authorization kept), body, status."""
        with self._lock:
            return copy.deepcopy(self._log)

    def requests_to(self, method: str, path_regex: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and re.search(path_regex, r["path"])]

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    # ------------------------------------------------------------- dispatch

    def _handle(self, method: str, raw_path: str, headers: Any, raw_body: bytes) -> tuple | None:
        """Returns (status, body, headers), or None to drop the connection."""
        split = urlsplit(raw_path)
        path, query = split.path.rstrip("/") or "/", parse_qs(split.query, keep_blank_values=True)
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = raw_body.decode("utf-8", "replace")
        entry = {
            "method": method,
            "path": path,
            "query": query,
            "headers": dict(headers.items()),
            "body": body,
            "status": None,
        }
        token = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        with self._lock:
            self._log.append(entry)
            fault = next((f for f in self._faults if f.matches(method, path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
            rate = self._rate_headers(token)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.close:
                entry["status"] = "dropped"
                return None
            if fault.status is not None:
                entry["status"] = fault.status
                return fault.status, self._fault_body(fault, rate), {**rate, **self._fault_headers(fault)}
        try:
            with self._lock:
                status, payload = self._route(method, path, query, token, body)
        except _HTTPError as err:
            status, payload = err.status, err.body
        entry["status"] = status
        return status, payload, rate

    def _route(self, method: str, path: str, query: dict, token: str, body: Any) -> tuple[int, Any]:
        if path == "/" and method == "GET":
            return 200, {"message": "Fake Buildkite REST API", "timestamp": int(time.time())}
        for route_method, pattern, handler, scope in _ROUTES:
            found = re.fullmatch(pattern, path)
            if found and route_method == method:
                auth = self._authenticate(token, scope)
                params = found.groupdict()
                if "number" in params:
                    params["number"] = int(params["number"])
                return getattr(self, handler)(auth, query, body, **params)
        raise _HTTPError(404, "Not Found")

    def _authenticate(self, token: str, scope: str | None) -> dict[str, Any]:
        record = self._tokens.get(token)
        if not token or record is None or record["_expired"]:
            raise _HTTPError(401, UNAUTHORIZED)
        if scope is not None and scope not in record["scopes"]:
            raise _HTTPError(403, f"Your access token doesn't have the {scope} scope")
        return record

    def _rate_headers(self, token: str) -> dict[str, str]:
        minute = int(time.time() // 60)
        if self._window[0] != minute:
            self._window = (minute, {})
        counts = self._window[1]
        counts["*"] = counts.get("*", 0) + 1
        counts[token] = counts.get(token, 0) + 1
        reset = str(60 - int(time.time()) % 60)
        return {
            "RateLimit-Scope": "rest",
            "RateLimit-Limit": str(ORG_LIMIT),
            "RateLimit-Remaining": str(max(ORG_LIMIT - counts["*"], 0)),
            "RateLimit-Reset": reset,
            "RateLimit-User-Scope": "rest_user",
            "RateLimit-User-Limit": str(USER_LIMIT),
            "RateLimit-User-Remaining": str(max(USER_LIMIT - counts[token], 0)),
            "RateLimit-User-Reset": reset,
        }

    @staticmethod
    def _fault_headers(fault: Fault) -> dict[str, str]:
        extra = {"RateLimit-Remaining": "0"} if fault.status == 429 else {}
        return {**extra, **fault.headers}

    @staticmethod
    def _fault_body(fault: Fault, rate: dict[str, str]) -> Any:
        if fault.body is not None:
            return fault.body
        if fault.status == 429:
            reset = int(fault.headers.get("RateLimit-Reset", rate["RateLimit-Reset"]))
            return {
                "message": f"You have exceeded your API rate limit. Please wait {reset} seconds "
                "before making more requests.",
                "scope": "rest",
                "limit": ORG_LIMIT,
                "current": ORG_LIMIT + 1,
                "reset": reset,
            }
        reasons = {
            500: "Internal Server Error",
            502: "Bad Gateway",
            503: "Service Unavailable",
            504: "Gateway Timeout",
        }
        return {"message": reasons.get(fault.status, "Error")}

    # ------------------------------------------------------------ endpoints

    def _access_token(self, auth, query, body):
        return 200, _public(auth)

    def _list_builds(self, auth, query, body, org, pipeline):
        builds = sorted(self._pipeline(org, pipeline)["builds"].values(), key=lambda b: -b["number"])
        if "state" in query:
            builds = [b for b in builds if b["state"] in query["state"]]
        return 200, [self._build_view(b, query) for b in builds]

    def _create_build_api(self, auth, query, body, org, pipeline):
        entry = self._pipeline(org, pipeline)
        body = body if isinstance(body, dict) else {}
        missing = [k for k in ("commit", "branch") if not body.get(k)]
        if missing:
            raise _HTTPError(422, "Validation Failed", errors=[{"field": k, "code": "missing_field"} for k in missing])
        number = self._new_build(
            org,
            pipeline,
            entry["steps"],
            body.get("env") or {},
            body["commit"],
            body["branch"],
            body.get("message", ""),
            body.get("meta_data") or {},
            "scheduled",
            "api",
            creator=auth["_user"],
        )
        return 201, self._build_view(entry["builds"][number], {})

    def _get_build(self, auth, query, body, org, pipeline, number):
        build = self._find_build(org, pipeline, number)
        view = self._build_view(build, query)
        states: dict[str, int] = {}
        for job in build["jobs"]:
            states[job["state"]] = states.get(job["state"], 0) + 1
        view["job_state_counts"] = {"total": len(build["jobs"]), "states": states}
        return 200, view

    def _cancel(self, auth, query, body, org, pipeline, number):
        build = self._find_build(org, pipeline, number)
        if build["state"] in FINISHED_BUILD_STATES:
            # Wording invented: the reference only says 422 with the reason.
            raise _HTTPError(422, f"Build can't be canceled because it's {build['state']}")
        build["state"], build["finished_at"], build["blocked"] = "canceled", _now(), False
        for job in build["jobs"]:
            if job["type"] == "script" and job["state"] in ("waiting", "scheduled", "assigned", "running"):
                job["state"] = "canceled"
            # The reference does not say what happens to a blocked manual job on cancel; it stays
            # `blocked` here, and unblocking it answers the documented canceled-build 422.
        return 200, self._build_view(build, {})

    def _list_jobs(self, auth, query, body, org, pipeline, number):
        jobs = self._find_build(org, pipeline, number)["jobs"]
        if query.get("include_retried_jobs", ["true"])[0] == "false":
            jobs = [j for j in jobs if not j.get("retried")]
        if "step_key" in query:
            jobs = [j for j in jobs if j.get("step_key") == query["step_key"][0]]
        if "state[]" in query:
            jobs = [j for j in jobs if j["state"] in query["state[]"]]
        return 200, {"items": _public(jobs), "links": {"self": None, "next": None}}

    def _get_job(self, auth, query, body, org, pipeline, number, job_id):
        return 200, _public(self._find_job(self._find_build(org, pipeline, number), job_id))

    def _unblock(self, auth, query, body, org, pipeline, number, job_id):
        build = self._find_build(org, pipeline, number)
        job = self._find_job(build, job_id)
        if build["state"] in ("canceled", "canceling"):
            raise _HTTPError(422, CANCELED_UNBLOCK)
        if job["type"] != "manual":
            raise _HTTPError(400, "This job type cannot be unblocked")
        teams = job.get("_allowed_teams")
        if teams and not teams & auth["_teams"]:
            raise _HTTPError(403, "Forbidden")  # inferred status, reference pitfall 6
        if job["state"] != "blocked":
            raise _HTTPError(422, NOT_BLOCKED)  # inferred status, reference table row b
        body = body if isinstance(body, dict) else {}
        fields = body.get("fields") or {}
        if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()):
            raise _HTTPError(422, "fields must be an object of string values (fake Buildkite is strict here)")
        unblocker = auth["_user"]
        if body.get("unblocker"):
            users = {t["_user"]["id"]: t["_user"] for t in self._tokens.values()}
            if body["unblocker"] not in users:
                raise _HTTPError(422, "Unblocker is not a valid user id for this organization")
            unblocker = users[body["unblocker"]]
        job.update(state="unblocked", unblockable=False, unblocked_by=copy.deepcopy(unblocker), unblocked_at=_now())
        build["meta_data"].update(fields)
        self._refresh_blocked(build)
        return 200, _public(job)

    def _list_annotations(self, auth, query, body, org, pipeline, number):
        found = sorted(
            self._find_build(org, pipeline, number)["_annotations"],
            key=lambda a: (-a["priority"], a["created_at"]),
        )
        out = _public(found)
        if query.get("omit_body", ["false"])[0] == "true":
            for a in out:
                a.pop("body_html", None)
        return 200, out

    def _create_annotation(self, auth, query, body, org, pipeline, number):
        build = self._find_build(org, pipeline, number)
        body = body if isinstance(body, dict) else {}
        if not isinstance(body.get("body"), str) or not body["body"]:
            raise _HTTPError(422, "Validation Failed", errors=[{"field": "body", "code": "missing_field"}])
        style = body.get("style") or "info"
        priority = body.get("priority", 3)
        if style not in ANNOTATION_STYLES:
            raise _HTTPError(422, f"Style must be one of {', '.join(ANNOTATION_STYLES)}")
        if not isinstance(priority, int) or not 1 <= priority <= 10:
            raise _HTTPError(422, "Priority must be between 1 and 10")
        context = body.get("context") or "default"
        now = _now()
        existing = next((a for a in build["_annotations"] if a["context"] == context), None)
        if existing is None:
            existing = {
                "id": str(uuid.uuid4()),
                "context": context,
                "scope": "build",
                "job_id": None,
                "created_at": now,
                "_body": "",
            }
            build["_annotations"].append(existing)
        # Same context replaces the annotation, or with `append` extends its body.
        existing["_body"] = existing["_body"] + body["body"] if body.get("append") else body["body"]
        # The fake doesn't render Markdown: body_html is the raw body.
        existing.update(style=style, priority=priority, body_html=existing["_body"], updated_at=now)
        return 201, _public(existing)

    def _list_artifacts(self, auth, query, body, org, pipeline, number):
        return 200, _public(self._find_build(org, pipeline, number)["_artifacts"])

    def _upload_artifact(self, auth, query, body, org, pipeline, number):
        # What `buildkite-agent artifact upload` leaves behind (the real agent talks to the Agent API and
        # cloud storage; only the result, the REST artifact list, is Buildkite's documented contract).
        build = self._find_build(org, pipeline, number)
        body = body if isinstance(body, dict) else {}
        path = body.get("path")
        if not isinstance(path, str) or not path or path.startswith("/") or ".." in path.split("/"):
            raise _HTTPError(422, "path must be a relative path inside the job's working directory")
        try:
            content = base64.b64decode(body.get("content_base64") or "", validate=True)
        except ValueError:
            raise _HTTPError(422, "content_base64 is not base64") from None
        artifact_id = str(uuid.uuid4())
        api = f"{self.url}/organizations/{org}/pipelines/{pipeline}/builds/{number}"
        job = next((j for j in build["jobs"] if j["type"] == "script"), None)
        artifact = {
            "id": artifact_id,
            "job_id": job["id"] if job else None,
            "url": f"{api}/jobs/{job['id'] if job else '-'}/artifacts/{artifact_id}",
            "download_url": f"{api}/jobs/{job['id'] if job else '-'}/artifacts/{artifact_id}/download",
            "state": "finished",
            "path": path,
            "dirname": path.rsplit("/", 1)[0] if "/" in path else ".",
            "filename": path.rsplit("/", 1)[-1],
            "mime_type": "image/png" if path.endswith(".png") else "application/octet-stream",
            "file_size": len(content),
            "sha1sum": hashlib.sha1(content).hexdigest(),
            "_content": content,
        }
        build["_artifacts"].append(artifact)
        return 201, _public(artifact)

    def _get_meta_data(self, auth, query, body, org, pipeline, number):
        return 200, dict(self._find_build(org, pipeline, number)["meta_data"])

    def _set_meta_data(self, auth, query, body, org, pipeline, number):
        build = self._find_build(org, pipeline, number)
        body = body if isinstance(body, dict) else {}
        key, value = body.get("key"), body.get("value")
        if not isinstance(key, str) or not key.strip():
            raise _HTTPError(422, "key must be a non-empty string")
        if not isinstance(value, str) or not value.strip():
            raise _HTTPError(422, "value cannot be empty, or composed of only whitespace characters")
        build["meta_data"][key] = value
        return 200, {"key": key, "value": value}

    # ------------------------------------------------------------ internals

    def _pipeline(self, org: str, pipeline: str) -> dict[str, Any]:
        entry = self._pipelines.get((org, pipeline))
        if entry is None:
            raise _HTTPError(404, "Not Found")
        return entry

    def _find_build(self, org: str, pipeline: str, number: int) -> dict[str, Any]:
        build = self._pipeline(org, pipeline)["builds"].get(int(number))
        if build is None:
            raise _HTTPError(404, "Not Found")
        return build

    @staticmethod
    def _find_job(build: dict[str, Any], job_id: str) -> dict[str, Any]:
        job = next((j for j in build["jobs"] if j["id"] == job_id), None)
        if job is None:
            raise _HTTPError(404, "No job found")
        return job

    @staticmethod
    def _latest_job(build: dict[str, Any], step_key: str) -> dict[str, Any]:
        jobs = [j for j in build["jobs"] if j.get("step_key") == step_key]
        if not jobs:
            raise KeyError(f"build #{build['number']} has no job with step_key {step_key!r}")
        return jobs[-1]

    @staticmethod
    def _refresh_blocked(build: dict[str, Any]) -> None:
        build["blocked"] = any(
            j["type"] == "manual" and j["state"] == "blocked" and not j.get("retried") for j in build["jobs"]
        )

    def _build_view(self, build: dict[str, Any], query: dict) -> dict[str, Any]:
        view = _public(build)
        if query.get("include_retried_jobs", ["false"])[0] != "true":
            view["jobs"] = [j for j in view["jobs"] if not j.get("retried")]
        if query.get("exclude_jobs", ["false"])[0] == "true":
            view.pop("jobs")
        if query.get("exclude_pipeline", ["false"])[0] == "true":
            view.pop("pipeline")
        return view

    def _new_build(self, org, pipeline, steps, env, commit, branch, message, meta_data, state, source, creator) -> int:
        entry = self._pipelines[(org, pipeline)]
        number = entry["next"]
        entry["next"] += 1
        build_id = str(uuid.uuid4())
        now = _now()
        api = f"{self.url}/organizations/{org}/pipelines/{pipeline}"
        web = f"https://buildkite.com/{org}/{pipeline}"
        jobs, reached = [], True
        for step in steps:
            default = ("blocked" if step.get("type") == "manual" else "passed") if reached else "waiting"
            job_state = step.get("state", default)
            if job_state in ("blocked", "waiting", "running", "scheduled"):
                reached = False
            jobs.append(self._make_job(org, pipeline, number, step, job_state))
        build = {
            "id": build_id,
            "graphql_id": _gid("Build", build_id),
            "url": f"{api}/builds/{number}",
            "web_url": f"{web}/builds/{number}",
            "number": number,
            "state": state,
            "blocked": False,
            "cancel_reason": None,
            "message": message,
            "commit": commit,
            "branch": branch,
            "env": dict(env),
            "source": source,
            "creator": copy.deepcopy(creator),
            "jobs": jobs,
            "created_at": now,
            "scheduled_at": now,
            "started_at": None if state == "scheduled" else now,
            "failing_at": None,
            "finished_at": None,
            "meta_data": dict(meta_data),
            "pull_request": None,
            "merge_queue": None,
            "rebuilt_from": None,
            "pipeline": {
                "id": str(uuid.uuid4()),
                "slug": pipeline,
                "name": pipeline,
                "url": api,
                "web_url": web,
            },
            "_annotations": [],
            "_artifacts": [],
        }
        self._refresh_blocked(build)
        entry["builds"][number] = build
        return number

    def _make_job(self, org: str, pipeline: str, number: int, step: dict[str, Any], state: str) -> dict:
        job_id = str(uuid.uuid4())
        kind = step.get("type", "script")
        label = step.get("label") or step.get("key")
        job = {
            "id": job_id,
            "graphql_id": _gid("Job", job_id),
            "type": kind,
            "step_key": step.get("key"),
            "state": state,
            "created_at": _now(),
            "retried": False,
            "retries_count": 0,
        }
        if kind == "manual":
            job.update(
                label=label,
                web_url=None,
                unblocked_by=None,
                unblocked_at=None,
                unblockable=state == "blocked",
                unblock_url=f"{self.url}/organizations/{org}/pipelines/{pipeline}/builds/{number}"
                f"/jobs/{job_id}/unblock",
                _allowed_teams=set(step.get("allowed_teams") or ()),
            )
        else:
            job.update(
                name=label,
                command=step.get("command"),
                web_url=(f"https://buildkite.com/{org}/{pipeline}/builds/{number}#{job_id}"),
                exit_status=0 if state == "passed" else None,
            )
        return job


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBuildkite
    server_version = "FakeBuildkite/1.0"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            result = self.fake._handle(self.command, self.path, self.headers, raw)
            if result is None:
                self.close_connection = True
                return
            status, payload, headers = result
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and went away

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass
