"""A build canceled in Buildkite: the watch sees it through the REST API (the fake), the notify paths stop
quietly instead of failing a run that published its model, and bad settings are named."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from buildkite.client import BuildkiteClient, BuildkiteError
from buildkite.context import BuildContext
from tasks import notify
from tasks.build_watch import WATCH_SECONDS_ENV, BuildWatch, canceled_reason, watch_interval
from tests.fakes.buildkite_fixtures import ORG, PIPELINE, TOKEN
from trainkite.errors import UserInputError

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning")


def _build(fake) -> BuildContext:
    return BuildContext(number=fake.create_build(ORG, PIPELINE), pipeline=PIPELINE, organization=ORG)


def _cancel(fake, number: int) -> None:
    """What a person's Cancel does: the documented PUT .../cancel."""
    resp = requests.put(
        f"{fake.url}/organizations/{ORG}/pipelines/{PIPELINE}/builds/{number}/cancel",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert resp.status_code == 200, resp.text


def _watch(fake, build: BuildContext, interval: float = 0.1):
    client = BuildkiteClient(org=ORG, pipeline=PIPELINE, max_retries=0)
    calls: list[str] = []
    called = threading.Event()

    def on_canceled(why: str) -> None:
        calls.append(why)
        called.set()

    return BuildWatch(lambda: client.get_build(build.number), on_canceled, interval), calls, called


@pytest.mark.parametrize(("raw", "expected"), [(None, 60.0), ("", 60.0), ("2.5", 2.5), ("0", 0.0)])
def test_watch_interval(raw, expected):
    assert watch_interval({} if raw is None else {WATCH_SECONDS_ENV: raw}) == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "nan", "inf"])
def test_a_bad_watch_interval_names_the_variable_and_value(raw):
    with pytest.raises(UserInputError, match=rf"{WATCH_SECONDS_ENV}='{raw}'"):
        watch_interval({WATCH_SECONDS_ENV: raw})


def test_only_canceling_or_canceled_stop_a_run():
    # A build waiting at a block step keeps its earlier state, even "passed" (reference 1.3).
    for state in ("running", "passed", "failed", "blocked", "scheduled"):
        assert canceled_reason({"number": 7, "state": state, "blocked": True}) is None
    assert canceled_reason({"number": 7, "state": "canceled"}) == (
        "Buildkite build #7 was canceled: nothing waits for this model any more"
    )
    assert "(superseded)" in canceled_reason({"number": 7, "state": "canceling", "cancel_reason": "superseded"})


def test_the_watch_sees_a_cancel_once(fake_buildkite, buildkite_env):
    build = _build(fake_buildkite)
    watch, calls, called = _watch(fake_buildkite, build)
    with watch:
        assert not called.wait(0.5), "a blocked, running build is not a cancel"
        _cancel(fake_buildkite, build.number)
        assert called.wait(5)
        looks = len(fake_buildkite.requests_to("GET", rf"/builds/{build.number}$"))
        time.sleep(0.5)
    assert calls == [f"Buildkite build #{build.number} was canceled: nothing waits for this model any more"]
    assert watch.reason == calls[0]
    assert len(fake_buildkite.requests_to("GET", rf"/builds/{build.number}$")) == looks, "it stopped looking"


def test_a_failed_look_is_not_a_cancel(fake_buildkite, buildkite_env):
    build = _build(fake_buildkite)
    fake_buildkite.inject(502, times=3, method="GET", path=rf"/builds/{build.number}$")
    watch, calls, called = _watch(fake_buildkite, build)
    with watch:
        assert not called.wait(1.0)
        statuses = [r["status"] for r in fake_buildkite.requests_to("GET", rf"/builds/{build.number}$")]
        assert statuses[:3] == [502, 502, 502] and 200 in statuses, "it went on asking"
        _cancel(fake_buildkite, build.number)
        assert called.wait(5)


def test_the_watch_stops_with_its_block(fake_buildkite, buildkite_env):
    build = _build(fake_buildkite)
    watch, calls, called = _watch(fake_buildkite, build, interval=0.2)
    with watch:
        pass
    _cancel(fake_buildkite, build.number)
    assert not called.wait(0.6)
    assert fake_buildkite.requests_to("GET", rf"/builds/{build.number}$") == []


def test_a_run_that_ends_after_its_build_was_canceled_completes_without_unblocking(fake_buildkite, buildkite_env):
    """The model is published and tracked; only the build stopped waiting. No PUT unblock succeeded, and the
    success path does not raise (the run would otherwise fail after publishing)."""
    build = _build(fake_buildkite)
    _cancel(fake_buildkite, build.number)
    fields = notify.success_fields(
        model_id=build.model_id,
        artifact_uri="/store/m",
        wandb_run_id=None,
        docker_image=None,
        metrics_line="test_accuracy=0.9",
    )
    assert notify.notify_success(build, fields, "### model") == "skipped: build canceled"
    assert "training-status" not in fake_buildkite.build(ORG, PIPELINE, build.number)["meta_data"]


def test_releasing_a_canceled_build_is_not_an_error(fake_buildkite, buildkite_env):
    """The cancel path's own hook and the release-build automation both reach a canceled build."""
    build = _build(fake_buildkite)
    _cancel(fake_buildkite, build.number)
    assert (
        notify.notify_failure(
            build, model_id=build.model_id, flow_run="r (1)", reason="CANCELLED: Buildkite build was canceled"
        )
        == "skipped: build canceled"
    )


def test_a_refused_token_is_still_an_error_on_a_canceled_build(fake_buildkite, buildkite_env, monkeypatch):
    build = _build(fake_buildkite)
    _cancel(fake_buildkite, build.number)
    fake_buildkite.add_token("bk-expired", expired=True)
    monkeypatch.setenv("BUILDKITE_API_TOKEN", "bk-expired")
    with pytest.raises(BuildkiteError, match="rejected the API token"):
        notify.notify_failure(build, model_id=build.model_id, flow_run="r (1)", reason="FAILED: x")


def test_a_late_cancel_leaves_a_finished_run_as_it_ended(prefect_api):
    """The watch saw the cancel just as the run finished: the run keeps its Completed state (the cancel is not
    forced), so its worker has nothing to stop."""
    from prefect import flow, get_client
    from prefect.states import Completed, Running

    from flows.hooks import _cancel_flow_run

    @flow(name="watch-late-cancel")
    def noop() -> None:
        return None

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(noop)
        client.set_flow_run_state(run.id, Running(), force=True)
        client.set_flow_run_state(run.id, Completed(), force=True)
        _cancel_flow_run(str(run.id), "Buildkite build #1 was canceled")
        assert client.read_flow_run(run.id).state.is_completed()
        running = client.create_flow_run(noop)
        client.set_flow_run_state(running.id, Running(), force=True)
        _cancel_flow_run(str(running.id), "Buildkite build #2 was canceled")
        state = client.read_flow_run(running.id).state
        client.delete_flow_run(run.id)
        client.delete_flow_run(running.id)
    assert state.is_cancelling() and state.message == "Buildkite build #2 was canceled"
