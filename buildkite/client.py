"""The project's one Buildkite REST client (plain `requests`, no Prefect).

Built against shared/reference/buildkite.md. The training flow uses it to unblock the
`training_finished` block step with field values, annotate builds and cancel builds whose
training failed. Every call has a timeout; 429 waits `RateLimit-Reset`; 5xx, connection
errors and read timeouts are retried with bounded, jittered backoff. The API token never
appears in logs, exception messages or reprs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

from trainkite.errors import TrainkiteError

log = logging.getLogger("trainkite.buildkite")

DEFAULT_API_URL = "https://api.buildkite.com/v2"
REQUIRED_SCOPES = ("read_builds", "write_builds")
ANNOTATION_STYLES = ("success", "info", "warning", "error")
# Buildkite's own CLI treats this answer to an unblock as "already unblocked"; its status is undocumented.
_NOT_BLOCKED = "the job's state must be blocked"
_MASK = "***"


class BuildkiteError(TrainkiteError, RuntimeError):
    """A Buildkite call failed; the message says what to fix. `status` is the HTTP status, if any.

    A TrainkiteError, so `trainkite train` inside a build with an expired or under-scoped token
    prints this message and exits 1 instead of a traceback.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class BuildkiteClient:
    def __init__(
        self,
        token: str | None = None,
        base_url: str | None = None,
        org: str | None = None,
        pipeline: str | None = None,
        *,
        timeout: float = 10,
        max_retries: int = 5,
        max_wait: float = 60,
        session: requests.Session | None = None,
    ):
        token = token if token is not None else os.environ.get("BUILDKITE_API_TOKEN")
        # Tokens read from files often carry a trailing newline; anything inside would make requests
        # raise InvalidHeader with the header value (the token) in its message.
        self._token = (token or "").strip() or None
        if self._token and re.search(r"\s", self._token):
            raise BuildkiteError("BUILDKITE_API_TOKEN contains whitespace; copy the token again")
        self.base_url = (base_url or os.environ.get("BUILDKITE_API_URL") or DEFAULT_API_URL).rstrip("/")
        self.org = org or os.environ.get("BUILDKITE_ORGANIZATION_SLUG")
        self.pipeline = pipeline or os.environ.get("BUILDKITE_PIPELINE_SLUG")
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.backoff_base = 0.5
        self.backoff_cap = min(30.0, max_wait)
        self.session = session or requests.Session()
        self.sleep: Callable[[float], None] = time.sleep  # tests swap this to run without waiting

    @classmethod
    def from_env(cls, **kwargs: Any) -> BuildkiteClient:
        """Client configured from BUILDKITE_API_TOKEN/_API_URL/_ORGANIZATION_SLUG/_PIPELINE_SLUG."""
        return cls(**kwargs)

    def __repr__(self) -> str:
        token = _MASK if self._token else None
        return (
            f"BuildkiteClient(base_url={self.base_url!r}, org={self.org!r}, "
            f"pipeline={self.pipeline!r}, token={token!r})"
        )

    # ------------------------------------------------------------------ API

    def get_access_token(self) -> dict:
        """GET /access-token: a cheap pre-flight showing the token's scopes and expiry."""
        return self._request("GET", "access-token")

    def get_build(self, number: int) -> dict:
        return self._request("GET", self._build_path(number), number=number)

    def find_job(self, number: int, step_key: str) -> dict | None:
        return _pick_job(self.get_build(number), step_key)

    def unblock(self, number: int, step_key: str, fields: Mapping[str, Any]) -> dict:
        """Unblock the block step `step_key` of build `number` with `fields`, at most once.

        Safe to repeat: if the step is already unblocked with exactly these values (e.g. our own
        earlier attempt whose response was lost) this succeeds; with other values it raises.
        Returns the manual job.
        """
        values = _field_strings(fields)
        build = self.get_build(number)
        job = _pick_job(build, step_key)
        if job is None:
            raise BuildkiteError(
                f"build #{number} of {self.org}/{self.pipeline} has no job with step key {step_key!r}; "
                "check the block step's `key` in pipeline.yml"
            )
        if job.get("type") != "manual":
            raise BuildkiteError(f"step {step_key!r} of build #{number} is a {job.get('type')} job, not a block step")
        state = job.get("state")
        if state == "blocked":
            try:
                return self._request(
                    "PUT",
                    f"{self._build_path(number)}/jobs/{job['id']}/unblock",
                    body={"fields": values},
                    number=number,
                )
            except BuildkiteError as exc:
                if _NOT_BLOCKED not in str(exc).lower():
                    raise
                # Someone, or our own retried PUT, got there first: judge by the values that landed.
        elif state != "unblocked":
            raise BuildkiteError(
                f"cannot unblock step {step_key!r} of build #{number}: its job is {state!r}, not 'blocked' "
                f"(build state {build.get('state')!r}); it may not be reached yet or the build has finished"
            )
        return self._confirm_unblocked(number, step_key, values)

    def annotate(
        self,
        number: int,
        body: str,
        *,
        context: str,
        style: str = "info",
        append: bool = False,
        priority: int | None = None,
    ) -> dict:
        if style not in ANNOTATION_STYLES:
            raise BuildkiteError(f"annotation style {style!r} is not one of {', '.join(ANNOTATION_STYLES)}")
        if priority is not None and not 1 <= priority <= 10:
            raise BuildkiteError(f"annotation priority {priority} is outside 1..10")
        payload: dict[str, Any] = {"body": body, "context": context, "style": style, "append": append}
        if priority is not None:
            payload["priority"] = priority
        return self._request(
            "POST",
            f"{self._build_path(number)}/annotations",
            body=payload,
            number=number,
            # Replacing an annotation by context is idempotent; appending twice duplicates text.
            idempotent=not append,
        )

    def cancel_build(self, number: int) -> dict:
        try:
            return self._request("PUT", f"{self._build_path(number)}/cancel", number=number)
        except BuildkiteError as exc:
            if exc.status != 422:
                raise
            # A retried cancel (or a human) may have won the race; that is what we wanted anyway.
            build = self.get_build(number)
            if build.get("state") in ("canceled", "canceling"):
                return build
            raise

    # ------------------------------------------------------------ internals

    def _build_path(self, number: int) -> str:
        if not self.org:
            raise BuildkiteError("Buildkite organization slug is not set: pass org= or set BUILDKITE_ORGANIZATION_SLUG")
        if not self.pipeline:
            raise BuildkiteError("Buildkite pipeline slug is not set: pass pipeline= or set BUILDKITE_PIPELINE_SLUG")
        return f"organizations/{self.org}/pipelines/{self.pipeline}/builds/{int(number)}"

    def _confirm_unblocked(self, number: int, step_key: str, values: dict[str, str]) -> dict:
        build = self.get_build(number)
        job = _pick_job(build, step_key) or {}
        if job.get("state") != "unblocked":
            raise BuildkiteError(
                f"cannot unblock step {step_key!r} of build #{number}: Buildkite says it is not blocked "
                f"and its job is now {job.get('state')!r} (build state {build.get('state')!r})"
            )
        meta = build.get("meta_data") or {}
        differing = sorted(k for k, v in values.items() if meta.get(k) != v)
        if differing:
            shown = ", ".join(f"{k}={_short(meta.get(k))} (ours {_short(values[k])})" for k in differing)
            raise BuildkiteError(
                f"step {step_key!r} of build #{number} was already unblocked with different values: {shown}. "
                "Start a new build to publish this model"
            )
        log.info("step %r of build #%s was already unblocked with these values; nothing to do", step_key, number)
        return job

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        number: int | None = None,
        idempotent: bool = True,
    ) -> Any:
        if not self._token:
            raise BuildkiteError(
                "no Buildkite API token: set BUILDKITE_API_TOKEN (a token with read_builds and write_builds)"
            )
        url = f"{self.base_url}/{path}"
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        for attempt in range(1, self.max_retries + 2):
            retries_left = attempt <= self.max_retries
            log.debug("Buildkite %s %s (attempt %d)", method, path, attempt)
            failure = resp = None
            try:
                resp = self.session.request(method, url, json=body, headers=headers, timeout=self.timeout)
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                # A connect timeout never reached the server, so even non-idempotent calls may retry it.
                sent = not isinstance(exc, requests.ConnectTimeout)
                failure = self._scrub(f"{type(exc).__name__}: {exc}")
            except requests.RequestException as exc:
                failure = self._scrub(f"{type(exc).__name__}: {exc}")
                sent, retries_left = True, False
            # Raising outside the except block keeps requests' exception (whose .request holds the
            # Authorization header) out of __context__.
            if failure is not None:
                if retries_left and (idempotent or not sent):
                    self._backoff(attempt, method, path, failure)
                    continue
                raise BuildkiteError(
                    f"Buildkite {method} {path} failed after {attempt} attempt(s): {failure}. "
                    f"Check network access to {self.base_url}"
                )
            if resp.status_code == 429 and retries_left:
                wait = self._rate_limit_wait(resp)
                if wait is None:
                    self._backoff(attempt, method, path, "429 rate limited")
                else:
                    log.warning("Buildkite rate limit hit on %s %s; waiting %.1fs", method, path, wait)
                    self.sleep(wait)
                continue
            if resp.status_code >= 500 and retries_left and idempotent:
                self._backoff(attempt, method, path, f"HTTP {resp.status_code}")
                continue
            if resp.status_code >= 400:
                raise self._error(resp, method, path, number, attempt)
            try:
                return resp.json() if resp.content else {}
            except ValueError:
                raise BuildkiteError(
                    f"Buildkite {method} {path} answered {resp.status_code} with non-JSON; "
                    f"is {self.base_url} the API URL (https://api.buildkite.com/v2)?",
                    status=resp.status_code,
                ) from None
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, method: str, path: str, why: str) -> None:
        # Full jitter keeps several flows that failed together from retrying in lockstep.
        wait = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))
        log.warning("Buildkite %s %s: %s; retry %d/%d in %.2fs", method, path, why, attempt, self.max_retries, wait)
        self.sleep(wait)

    def _rate_limit_wait(self, resp: requests.Response) -> float | None:
        h = resp.headers
        # Two limits (organization, user); wait for the one that is exhausted.
        user_limited = h.get("RateLimit-User-Remaining") == "0" and h.get("RateLimit-Remaining") != "0"
        raw = h.get("RateLimit-User-Reset" if user_limited else "RateLimit-Reset")
        try:
            return min(max(float(raw), 0.0), self.max_wait)
        except (TypeError, ValueError):
            return None

    def _error(self, resp: requests.Response, method: str, path: str, number: int | None, attempts: int):
        status = resp.status_code
        try:
            message = str(resp.json().get("message", ""))
        except (ValueError, AttributeError):
            message = resp.text[:200]
        where = f"{self.org}/{self.pipeline}" + (f" build #{number}" if number is not None else "")
        if status == 401:
            text = (
                f"Buildkite rejected the API token (401: {message}). "
                "The token is missing, invalid or expired: set BUILDKITE_API_TOKEN to a valid token, "
                "or create a new one (read_builds, write_builds) at https://buildkite.com/user/api-access-tokens"
            )
        elif status == 403 and "scope" in message.lower():
            found = re.search(r"the (\w+) scope", message)
            scope = found.group(1) if found else "required"
            text = (
                f"the token lacks the {scope} scope; it needs {' and '.join(REQUIRED_SCOPES)}. "
                f"Create a token with both scopes and set BUILDKITE_API_TOKEN (Buildkite said: {message})"
            )
        elif status == 403:
            text = (
                f"Buildkite refused {method} {path} (403 {message}): the token's user lacks access to "
                f"{where} or is not in the block step's allowed_teams; give that user (the bot) access "
                "or add it to the team"
            )
        elif status == 404:
            build = f" and build number {number}" if number is not None else ""
            text = (
                f"Buildkite found nothing at {method} {path} (404 {message}): check the organization slug "
                f"{self.org!r}, pipeline slug {self.pipeline!r}{build} (BUILDKITE_ORGANIZATION_SLUG, "
                "BUILDKITE_PIPELINE_SLUG), and that the token's user can see that pipeline"
            )
        elif status == 422 and "canceled build" in message.lower():
            text = f"{where} was canceled; there is nothing to unblock (422: {message})"
        elif status == 429:
            text = f"Buildkite rate limit still exceeded after {attempts} attempts on {method} {path}: {message}"
        elif status >= 500:
            text = f"Buildkite {method} {path} failed with {status} after {attempts} attempt(s): {message}"
        else:
            text = f"Buildkite {method} {path} failed ({status}): {message}"
        return BuildkiteError(self._scrub(text), status=status)

    def _scrub(self, text: str) -> str:
        if self._token:
            for form in {self._token, repr(self._token)[1:-1], json.dumps(self._token)[1:-1]}:
                text = text.replace(form, _MASK)
        return text


def _pick_job(build: Mapping[str, Any], step_key: str) -> dict | None:
    jobs = [j for j in build.get("jobs") or [] if j.get("step_key") == step_key]
    # A retried job is superseded by a later one with the same step key.
    current = [j for j in jobs if not j.get("retried")]
    return (current or jobs or [None])[-1]


def _field_strings(fields: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in fields.items():
        if not isinstance(key, str) or not key:
            raise BuildkiteError(f"unblock field key {key!r} must be a non-empty string")
        if value is None:
            raise BuildkiteError(f"unblock field {key!r} is None; every field needs a value")
        if isinstance(value, (bytes, bytearray, Mapping, list, tuple, set, frozenset)):
            raise BuildkiteError(
                f"unblock field {key!r} is a {type(value).__name__}; pass a string (json.dumps it if structured)"
            )
        out[key] = str(value)
    return out


def _short(value: str | None, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
