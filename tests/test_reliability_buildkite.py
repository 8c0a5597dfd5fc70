"""Reliability, Buildkite side: rate limits, 5xx, timeouts and a Buildkite that stays broken, through the
code the training flow runs (the train flow's notify task, `tasks.notify`, `flows.hooks`) against the fake
Buildkite REST API. Client-level retry details are in tests/test_buildkite_client.py; these tests check
what a *build* sees: unblocked exactly once, or released as failed, and never left waiting."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from buildkite.client import BuildkiteClient, BuildkiteError
from buildkite.context import BuildContext
from tasks import notify
from tests.fakes.buildkite_fixtures import ORG, PIPELINE, TOKEN
from tests.process_helpers import wait_for

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning")

UNBLOCK = r"/jobs/[^/]+/unblock$"


def _build(fake) -> BuildContext:
    return BuildContext(number=fake.create_build(ORG, PIPELINE), pipeline=PIPELINE, organization=ORG)


def _fields(model_id: str) -> dict[str, str]:
    return notify.success_fields(
        model_id=model_id,
        artifact_uri=f"/store/sentiment/{model_id}",
        wandb_run_id=None,
        docker_image=None,
        metrics_line="test_accuracy=0.9",
    )


def _statuses(fake, number: int, method: str = "PUT", path: str = UNBLOCK) -> list:
    return [r["status"] for r in fake.requests_to(method, rf"/builds/{number}{path}")]


def _fast_client(monkeypatch, timeout: float) -> None:
    """The notify path's client with a short request timeout (production: 10 s), so a test can time out
    twice without waiting 20 s. Retry count and backoff stay the production defaults."""
    monkeypatch.setattr(
        notify,
        "client_for",
        lambda build: BuildkiteClient(org=build.organization, pipeline=build.pipeline, timeout=timeout),
    )


def test_429_with_ratelimit_reset_then_200_unblocks_exactly_once(
    prefect_api, tk_home, params_factory, fake_buildkite, buildkite_env
):
    """Scenario 1, through the whole train flow: its notify task meets a 429, waits RateLimit-Reset, unblocks."""
    from flows.train import train

    build = _build(fake_buildkite)
    fake_buildkite.inject(429, headers={"RateLimit-Reset": "1"}, method="PUT", path=UNBLOCK)
    t0 = time.monotonic()
    result = train(params=params_factory(), model_id=build.model_id, build=build)
    assert result["model_id"] == build.model_id

    assert _statuses(fake_buildkite, build.number) == [429, 200]  # one 429, then exactly one successful PUT
    meta = fake_buildkite.build(ORG, PIPELINE, build.number)["meta_data"]
    assert meta["model-id"] == build.model_id and meta["training-status"] == "passed"
    assert fake_buildkite.job(ORG, PIPELINE, build.number, "training_finished")["state"] == "unblocked"
    assert time.monotonic() - t0 >= 1.0  # it did wait for the reset
    print(f"\n429 then 200: flow completed in {time.monotonic() - t0:.1f}s, unblock PUTs [429, 200]")


def test_502_503_then_two_timeouts_are_retried_and_the_step_is_unblocked_once(
    fake_buildkite, buildkite_env, monkeypatch
):
    """Scenario 2: bounded retries ride out 502, 503 and two read timeouts; the build is unblocked once."""
    _fast_client(monkeypatch, timeout=0.5)
    build = _build(fake_buildkite)
    fake_buildkite.inject(502, method="PUT", path=UNBLOCK)
    fake_buildkite.inject(503, method="PUT", path=UNBLOCK)
    # Slower than the client's timeout: the client gives up waiting, the fake still applies the request.
    fake_buildkite.inject(delay=1.0, times=2, method="PUT", path=UNBLOCK)

    t0 = time.monotonic()
    assert notify.notify_success(build, _fields(build.model_id), "### done") == "unblocked"
    elapsed = time.monotonic() - t0

    # A timed-out PUT is still sleeping in the fake when the client has already confirmed and returned: read the
    # log once every request has been answered (status None = still in flight).
    wait_for("the timed-out PUTs to be answered", lambda: None not in _statuses(fake_buildkite, build.number), 5)
    statuses = _statuses(fake_buildkite, build.number)
    assert statuses[:2] == [502, 503] and statuses.count(200) == 1, statuses
    # The timed-out PUT had landed: later attempts see "not blocked", and the client confirms the values.
    assert set(statuses[3:]) <= {422}, statuses
    assert len(statuses) <= 6  # max_retries=5
    print(f"\nunblock PUTs {statuses}; unblocked in {elapsed:.1f}s")
    meta = fake_buildkite.build(ORG, PIPELINE, build.number)["meta_data"]
    assert meta["model-id"] == build.model_id and meta["training-status"] == "passed"
    assert elapsed < 20, elapsed


def test_persistent_5xx_fails_fast_and_the_failure_hook_releases_the_build(fake_buildkite, buildkite_env):
    """Scenario 2, persistent variant: the notify path gives up after 6 attempts with a clear error, within a
    bounded time; the flow's failure hook (what runs when notify raises) then releases the build as failed."""
    from prefect.states import Failed

    from flows.hooks import release_build_on_failure

    build = _build(fake_buildkite)
    fake_buildkite.inject(503, times=6, method="PUT", path=UNBLOCK)

    t0 = time.monotonic()
    with pytest.raises(BuildkiteError) as err:
        notify.notify_success(build, _fields(build.model_id), "### done")
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert "failed with 503 after 6 attempt(s)" in message and TOKEN not in message
    assert _statuses(fake_buildkite, build.number) == [503] * 6
    # Production backoff (full jitter, 0.5 s doubling, 5 retries): at most 15.5 s of sleeping.
    assert elapsed < 25, elapsed
    print(f"\npersistent 503: gave up after 6 attempts in {elapsed:.1f}s")
    assert fake_buildkite.job(ORG, PIPELINE, build.number, "training_finished")["state"] == "blocked"

    flow_run = SimpleNamespace(
        name="brave-otter",
        id="0000-run",
        parameters={"build": build.model_dump(mode="json"), "model_id": build.model_id},
    )
    release_build_on_failure(None, flow_run, Failed(message=f"Task run 'notify' failed: {message}"))

    assert fake_buildkite.job(ORG, PIPELINE, build.number, "training_finished")["state"] == "unblocked"
    meta = fake_buildkite.build(ORG, PIPELINE, build.number)["meta_data"]
    assert meta["training-status"] == "failed" and "503" in meta["metrics"]
    notes = {a["context"]: a for a in fake_buildkite.annotations(ORG, PIPELINE, build.number)}
    assert notes["trainkite-training"]["style"] == "error" and "brave-otter" in notes["trainkite-training"]["body"]


@pytest.mark.parametrize("outcome", ["success", "failure"])
def test_a_broken_annotations_endpoint_does_not_keep_the_build_waiting(fake_buildkite, buildkite_env, outcome):
    """Found by this suite: notify annotated before unblocking, so an annotation Buildkite refuses (here 422
    on every POST) stopped the unblock and left the build waiting. The annotation is a report; the unblock
    is what releases the build."""
    build = _build(fake_buildkite)
    fake_buildkite.inject(422, body={"message": "Validation Failed"}, times=50, method="POST", path=r"/annotations$")
    if outcome == "success":
        assert notify.notify_success(build, _fields(build.model_id), "### done") == "unblocked"
        expected = "passed"
    else:
        assert (
            notify.notify_failure(build, model_id=build.model_id, flow_run="r (1)", reason="FAILED: boom") == "released"
        )
        expected = "failed"
    assert _statuses(fake_buildkite, build.number, "POST", r"/annotations$") == [422]  # a 4xx is not retried
    assert fake_buildkite.job(ORG, PIPELINE, build.number, "training_finished")["state"] == "unblocked"
    assert fake_buildkite.build(ORG, PIPELINE, build.number)["meta_data"]["training-status"] == expected


def test_a_refused_token_fails_the_run_at_once_with_the_reason(
    prefect_api, tk_home, params_factory, fake_buildkite, buildkite_env, monkeypatch
):
    """A 401 will not fix itself: the notify task is not retried (it used to wait 10 s and ask again), the
    run fails with Buildkite's reason, and the token is not in it."""
    from flows.train import train

    fake_buildkite.add_token("bk-expired", expired=True)
    monkeypatch.setenv("BUILDKITE_API_TOKEN", "bk-expired")
    build = _build(fake_buildkite)
    t0 = time.monotonic()
    with pytest.raises(BuildkiteError, match="rejected the API token") as err:
        train(params=params_factory(), model_id=build.model_id, build=build)
    assert "bk-expired" not in str(err.value)
    # One GET from the notify task (not retried), one from the failure hook trying to release the build.
    assert len(fake_buildkite.requests_to("GET", rf"/builds/{build.number}$")) == 2
    assert time.monotonic() - t0 < 60
    assert fake_buildkite.job(ORG, PIPELINE, build.number, "training_finished")["state"] == "blocked"
