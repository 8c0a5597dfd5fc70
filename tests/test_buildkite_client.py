"""BuildkiteClient against the fake Buildkite API over real HTTP, and the fake buildkite-agent."""

from __future__ import annotations

import json
import logging
import subprocess
import time

import pytest
import requests

from buildkite.client import BuildkiteClient, BuildkiteError
from tests.fakes.buildkite_fixtures import AGENT_BIN, ORG, PIPELINE, TOKEN
from tests.fakes.buildkite_server import UNAUTHORIZED, FakeBuildkite

FIELDS = {
    "model-id": "trainkite-1",
    "model-data-path": "s3://models/trainkite/trainkite-1/",
    "wandb-run-id": "abc123",
    "model-env": json.dumps({"MODEL_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:1:secret:x"}),
    "docker-image": "repo/serve:1.0",
    "metrics": "accuracy=0.91 f1=0.89",
}


def make_client(fake: FakeBuildkite, token: str = TOKEN, org: str = ORG, **kwargs) -> BuildkiteClient:
    kwargs.setdefault("timeout", 2)
    kwargs.setdefault("max_retries", 3)
    client = BuildkiteClient(token, fake.url, org, PIPELINE, **kwargs)
    client.sleeps = []
    client.sleep = client.sleeps.append
    return client


@pytest.fixture
def client(fake_buildkite: FakeBuildkite) -> BuildkiteClient:
    return make_client(fake_buildkite)


@pytest.fixture
def build(fake_buildkite: FakeBuildkite) -> int:
    return fake_buildkite.create_build(ORG, PIPELINE, env={"MODEL_NAME": "news"}, commit="abc1234")


def unblock_puts(fake: FakeBuildkite) -> list[dict]:
    return fake.requests_to("PUT", r"/unblock$")


# ------------------------------------------------------------------ reads


def test_get_build_returns_documented_fields(client, build):
    got = client.get_build(build)
    assert got["number"] == build
    assert got["blocked"] is True
    assert got["state"] == "running"
    assert got["web_url"] == f"https://buildkite.com/{ORG}/{PIPELINE}/builds/{build}"
    assert got["meta_data"] == {}
    assert got["commit"] == "abc1234" and got["env"] == {"MODEL_NAME": "news"}
    steps = [j["step_key"] for j in got["jobs"]]
    assert steps == ["launch_training", "training_finished", "report", "deploy"]


def test_from_env_reads_the_buildkite_variables(buildkite_env, build):
    client = BuildkiteClient.from_env()
    assert (client.org, client.pipeline) == (ORG, PIPELINE)
    assert client.base_url == buildkite_env["BUILDKITE_API_URL"]
    assert client.get_build(build)["number"] == build


def test_get_access_token_is_a_preflight(client):
    token = client.get_access_token()
    assert set(token["scopes"]) == {"read_builds", "write_builds"}
    assert "expires_at" in token and "user" in token


def test_find_job_by_step_key(client, build):
    job = client.find_job(build, "training_finished")
    assert job["type"] == "manual" and job["state"] == "blocked" and job["unblockable"] is True
    assert client.find_job(build, "launch_training")["type"] == "script"
    assert client.find_job(build, "no_such_step") is None


def test_find_job_prefers_the_retry(fake_buildkite, client, build):
    new_id = fake_buildkite.retry_job(ORG, PIPELINE, build, "training_finished", state="blocked")
    assert client.find_job(build, "training_finished")["id"] == new_id


# ----------------------------------------------------------------- unblock


def test_unblock_sends_strings_that_land_in_meta_data(fake_buildkite, client, build):
    fields = {**FIELDS, "epochs": 3, "accuracy": 0.91}
    job = client.unblock(build, "training_finished", fields)

    assert job["state"] == "unblocked" and job["unblocked_by"]["name"] == "trainkite-bot"
    assert job["unblocked_at"]
    (put,) = unblock_puts(fake_buildkite)
    assert put["body"] == {"fields": {**FIELDS, "epochs": "3", "accuracy": "0.91"}}
    after = fake_buildkite.build(ORG, PIPELINE, build)
    assert after["meta_data"] == {**FIELDS, "epochs": "3", "accuracy": "0.91"}
    assert after["blocked"] is False


def test_unblock_twice_with_same_values_is_a_no_op(fake_buildkite, client, build):
    client.unblock(build, "training_finished", FIELDS)
    again = client.unblock(build, "training_finished", FIELDS)
    assert again["state"] == "unblocked"
    assert len(unblock_puts(fake_buildkite)) == 1


def test_unblock_again_with_other_values_is_a_clear_error(client, build):
    client.unblock(build, "training_finished", FIELDS)
    with pytest.raises(BuildkiteError, match="already unblocked with different values") as err:
        client.unblock(build, "training_finished", {**FIELDS, "wandb-run-id": "zzz999"})
    assert "wandb-run-id" in str(err.value) and "model-id" not in str(err.value)


def test_unblock_whose_response_was_lost_succeeds_once(fake_buildkite, build):
    """The PUT lands but its answer times out; the retry hears "must be blocked" and checks the values."""
    client = make_client(fake_buildkite, timeout=0.2)
    client.sleep = lambda seconds: time.sleep(0.6)  # let the slow first PUT finish before the retry
    fake_buildkite.inject(delay=0.4, method="PUT", path="/unblock$")

    client.unblock(build, "training_finished", FIELDS)

    assert [r["status"] for r in unblock_puts(fake_buildkite)] == [200, 422]
    assert fake_buildkite.build(ORG, PIPELINE, build)["meta_data"] == FIELDS


def test_unblock_refuses_none_and_structured_values_naming_the_field(fake_buildkite, client, build):
    with pytest.raises(BuildkiteError, match="'wandb-run-id' is None"):
        client.unblock(build, "training_finished", {**FIELDS, "wandb-run-id": None})
    with pytest.raises(BuildkiteError, match=r"'model-env' is a dict.*json\.dumps"):
        client.unblock(build, "training_finished", {**FIELDS, "model-env": {"A": "1"}})
    assert fake_buildkite.requests == []


def test_unblock_unknown_step_or_wrong_job_type(client, build):
    with pytest.raises(BuildkiteError, match="no job with step key 'trainig_finished'"):
        client.unblock(build, "trainig_finished", FIELDS)
    with pytest.raises(BuildkiteError, match="not a block step"):
        client.unblock(build, "launch_training", FIELDS)


def test_unblock_a_step_not_reached_yet(client, build):
    with pytest.raises(BuildkiteError, match="its job is 'waiting', not 'blocked'"):
        client.unblock(build, "deploy", {"approved": "yes"})


# ---------------------------------------------------------- retries and limits


def test_429_waits_rate_limit_reset_then_unblocks_once(fake_buildkite, client, build):
    fake_buildkite.inject(429, headers={"RateLimit-Reset": "1"}, method="PUT", path="/unblock$")

    client.unblock(build, "training_finished", FIELDS)

    assert client.sleeps == [1.0]
    assert [r["status"] for r in unblock_puts(fake_buildkite)] == [429, 200]
    assert fake_buildkite.build(ORG, PIPELINE, build)["meta_data"] == FIELDS


def test_429_wait_is_capped_by_max_wait(fake_buildkite, build):
    client = make_client(fake_buildkite, max_wait=5)
    fake_buildkite.inject(429, headers={"RateLimit-Reset": "3600"})
    client.get_build(build)
    assert client.sleeps == [5.0]


def test_502_and_503_then_success(fake_buildkite, client, build):
    fake_buildkite.inject(502)
    fake_buildkite.inject(503)
    assert client.get_build(build)["number"] == build
    assert [r["status"] for r in fake_buildkite.requests] == [502, 503, 200]
    assert len(client.sleeps) == 2
    assert 0 <= client.sleeps[0] <= 0.5 and 0 <= client.sleeps[1] <= 1.0  # full jitter under base * 2**n


def test_read_timeouts_twice_then_success(fake_buildkite, build):
    client = make_client(fake_buildkite, timeout=0.2)
    fake_buildkite.inject(delay=0.5, times=2, method="GET")
    started = time.monotonic()
    assert client.get_build(build)["number"] == build
    assert len(fake_buildkite.requests_to("GET", r"/builds/\d+$")) == 3
    assert len(client.sleeps) == 2
    assert time.monotonic() - started < 2


def test_persistent_5xx_gives_up_after_bounded_retries(fake_buildkite, client, build):
    fake_buildkite.inject(503, times=100)
    with pytest.raises(BuildkiteError, match="failed with 503 after 4 attempt") as err:
        client.get_build(build)
    assert err.value.status == 503
    assert len(fake_buildkite.requests) == 4  # 1 + max_retries
    assert len(client.sleeps) == 3


def test_dropped_connections_are_retried(fake_buildkite, client, build):
    fake_buildkite.inject(close=True)
    assert client.get_build(build)["number"] == build
    assert [r["status"] for r in fake_buildkite.requests] == ["dropped", 200]


def test_unreachable_server_is_a_clear_error():
    fake = FakeBuildkite().start()
    url = fake.url
    fake.stop()
    client = BuildkiteClient(TOKEN, url, ORG, PIPELINE, timeout=1, max_retries=2)
    client.sleep = lambda s: None
    with pytest.raises(BuildkiteError, match=r"failed after 3 attempt.*Check network access") as err:
        client.get_build(1)
    assert err.value.__cause__ is None and err.value.__context__ is None


def test_appending_annotation_is_not_retried_after_a_5xx(fake_buildkite, client, build):
    fake_buildkite.inject(502, method="POST")
    with pytest.raises(BuildkiteError, match="502"):
        client.annotate(build, "more", context="log", append=True)
    assert len(fake_buildkite.requests) == 1


# ------------------------------------------------------------- error messages


def test_missing_token_says_to_set_it(fake_buildkite, monkeypatch, build):
    monkeypatch.delenv("BUILDKITE_API_TOKEN", raising=False)
    client = BuildkiteClient(None, fake_buildkite.url, ORG, PIPELINE)
    with pytest.raises(BuildkiteError, match="no Buildkite API token: set BUILDKITE_API_TOKEN"):
        client.get_build(build)
    assert fake_buildkite.requests == []


def test_invalid_token_401(fake_buildkite, build):
    client = make_client(fake_buildkite, token="bk-wrong")
    with pytest.raises(BuildkiteError, match="missing, invalid or expired: set BUILDKITE_API_TOKEN") as err:
        client.get_build(build)
    assert err.value.status == 401
    assert "create a new one" in str(err.value)


def test_expired_token_401(fake_buildkite, build):
    fake_buildkite.add_token("bk-old", expired=True)
    with pytest.raises(BuildkiteError, match="expired") as err:
        make_client(fake_buildkite, token="bk-old").unblock(build, "training_finished", FIELDS)
    assert err.value.status == 401


def test_missing_scope_403(fake_buildkite, build):
    fake_buildkite.add_token("bk-read-only", scopes=["read_builds"])
    client = make_client(fake_buildkite, token="bk-read-only")
    assert client.get_build(build)["number"] == build
    with pytest.raises(BuildkiteError, match="lacks the write_builds scope; it needs read_builds and write_b"):
        client.unblock(build, "training_finished", FIELDS)


def test_forbidden_403_when_not_in_allowed_teams(fake_buildkite):
    steps = [
        {"key": "launch_training", "type": "script"},
        {"key": "training_finished", "type": "manual", "allowed_teams": ["ml-bot"]},
    ]
    number = fake_buildkite.create_build(ORG, PIPELINE, steps)
    with pytest.raises(BuildkiteError, match="lacks access to acme/trainkite build #1 or is not in") as err:
        make_client(fake_buildkite).unblock(number, "training_finished", FIELDS)
    assert err.value.status == 403 and "allowed_teams" in str(err.value)

    fake_buildkite.add_token("bk-bot", teams=["ml-bot"])
    make_client(fake_buildkite, token="bk-bot").unblock(number, "training_finished", FIELDS)


def test_wrong_slug_404_names_org_pipeline_and_build(fake_buildkite, build):
    with pytest.raises(BuildkiteError) as err:
        make_client(fake_buildkite, org="acme-typo").get_build(build)
    message = str(err.value)
    assert err.value.status == 404
    assert "'acme-typo'" in message and "'trainkite'" in message and f"build number {build}" in message


def test_unblock_of_canceled_build_422(client, build):
    client.cancel_build(build)
    with pytest.raises(BuildkiteError, match="was canceled; there is nothing to unblock") as err:
        client.unblock(build, "training_finished", FIELDS)
    assert err.value.status == 422


def test_missing_slugs_are_named(fake_buildkite, monkeypatch):
    monkeypatch.delenv("BUILDKITE_PIPELINE_SLUG", raising=False)
    client = BuildkiteClient(TOKEN, fake_buildkite.url, ORG)
    with pytest.raises(BuildkiteError, match="BUILDKITE_PIPELINE_SLUG"):
        client.get_build(1)


# ------------------------------------------------------------ cancel, annotate


def test_cancel_build_is_idempotent(fake_buildkite, client, build):
    assert client.cancel_build(build)["state"] == "canceled"
    assert fake_buildkite.build(ORG, PIPELINE, build)["blocked"] is False
    assert client.cancel_build(build)["state"] == "canceled"  # second one answers 422, build is canceled


def test_cancel_of_a_finished_build_says_why(fake_buildkite, client, build):
    fake_buildkite.set_build_state(ORG, PIPELINE, build, "passed")
    with pytest.raises(BuildkiteError, match="can't be canceled because it's passed") as err:
        client.cancel_build(build)
    assert err.value.status == 422 and "nothing to unblock" not in str(err.value)


def test_unblock_after_the_build_failed_meanwhile(fake_buildkite, client, build):
    """Blocked when we looked, `blocked_failed` by the time the PUT lands."""
    read_build = client.get_build

    def read_then_fail(number):
        got = read_build(number)
        fake_buildkite.set_job_state(ORG, PIPELINE, build, "training_finished", "blocked_failed")
        return got

    client.get_build = read_then_fail
    with pytest.raises(BuildkiteError, match="not blocked and its job is now 'blocked_failed'"):
        client.unblock(build, "training_finished", FIELDS)
    assert [r["status"] for r in unblock_puts(fake_buildkite)] == [422]


def test_annotate_context_style_append(fake_buildkite, client, build):
    created = client.annotate(build, "[W&B run](https://wandb.ai/e/p/runs/abc123)\n", context="wandb")
    assert created["context"] == "wandb" and created["style"] == "info" and created["scope"] == "build"
    client.annotate(build, "accuracy 0.91\n", context="wandb", append=True)
    client.annotate(build, "training failed", context="failure", style="error", priority=9)
    client.annotate(build, "training failed: OOM", context="failure", style="error", priority=9)

    notes = {a["context"]: a for a in fake_buildkite.annotations(ORG, PIPELINE, build)}
    assert notes["wandb"]["body"] == "[W&B run](https://wandb.ai/e/p/runs/abc123)\naccuracy 0.91\n"
    assert notes["failure"]["body"] == "training failed: OOM"  # same context replaces
    assert notes["failure"]["style"] == "error" and notes["failure"]["priority"] == 9
    with pytest.raises(BuildkiteError, match="style 'danger'"):
        client.annotate(build, "x", context="c", style="danger")


# --------------------------------------------------------------- the secret


def test_token_never_in_logs_errors_or_reprs(fake_buildkite, caplog, build):
    caplog.set_level(logging.DEBUG)
    secret = "bk-secret-0123456789abcdef"
    fake_buildkite.add_token(secret)
    client = make_client(fake_buildkite, token=secret, timeout=0.2)
    errors: list[BaseException] = []

    fake_buildkite.inject(429, headers={"RateLimit-Reset": "0"})
    fake_buildkite.inject(502)
    fake_buildkite.inject(delay=0.4)
    client.unblock(build, "training_finished", FIELDS)
    client.annotate(build, "done", context="wandb")
    fake_buildkite.inject(503, times=10)
    for call in (
        lambda: client.get_build(build),
        lambda: make_client(fake_buildkite, token=secret, org="nope").get_build(build),
        lambda: client.unblock(build, "training_finished", {**FIELDS, "model-id": "other"}),
    ):
        with pytest.raises(BuildkiteError) as err:
            call()
        errors.append(err.value)
    fake_buildkite.stop()
    with pytest.raises(BuildkiteError) as err:
        client.get_build(build)
    errors.append(err.value)

    # Positive control: the token did go over the wire.
    assert all(r["headers"]["Authorization"] == f"Bearer {secret}" for r in fake_buildkite.requests)
    assert caplog.records, "expected the client to log"
    for record in caplog.records:
        assert secret not in record.getMessage() and secret not in repr(record.args)
    for exc in errors:
        assert secret not in str(exc) and secret not in repr(exc)
        assert exc.__context__ is None or secret not in repr(exc.__context__)
    assert secret not in repr(client) and "***" in repr(client)


def test_token_with_whitespace_is_refused_without_echoing_it(fake_buildkite):
    with pytest.raises(BuildkiteError, match="contains whitespace") as err:
        BuildkiteClient("bk-abc\ndef", fake_buildkite.url, ORG, PIPELINE)
    assert "bk-abc" not in str(err.value)
    assert BuildkiteClient(" bk-test-token\n", fake_buildkite.url, ORG, PIPELINE).get_access_token()


# ---------------------------------------------------- the fake keeps the contract


def test_fake_speaks_the_documented_contract(fake_buildkite, build):
    api = f"{fake_buildkite.url}/organizations/{ORG}/pipelines/{PIPELINE}"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    unauth = requests.get(f"{api}/builds/{build}", timeout=5)
    assert unauth.status_code == 401 and unauth.json() == {"message": UNAUTHORIZED}
    assert unauth.headers["RateLimit-Scope"] == "rest" and "RateLimit-User-Reset" in unauth.headers

    jobs = requests.get(
        f"{api}/builds/{build}/jobs", params={"step_key": "training_finished"}, headers=auth, timeout=5
    ).json()["items"]
    (job,) = jobs
    assert job["unblock_url"].endswith(f"/builds/{build}/jobs/{job['id']}/unblock")

    script = requests.get(f"{api}/builds/{build}", headers=auth, timeout=5).json()["jobs"][0]
    script_unblock = f"{api}/builds/{build}/jobs/{script['id']}/unblock"
    wrong = requests.put(script_unblock, json={}, headers=auth, timeout=5)
    assert (wrong.status_code, wrong.json()) == (400, {"message": "This job type cannot be unblocked"})

    first = requests.put(job["unblock_url"], json={}, headers=auth, timeout=5)
    second = requests.put(job["unblock_url"], json={}, headers=auth, timeout=5)
    assert first.status_code == 200
    assert (second.status_code, second.json()["message"]) == (422, "The job's state must be blocked")

    new_build = {"commit": "HEAD", "branch": "main"}
    created = requests.post(f"{api}/builds", json=new_build, headers=auth, timeout=5)
    assert created.status_code == 201 and created.json()["state"] == "scheduled"
    assert created.json()["number"] == build + 1


# ------------------------------------------------------------ the fake agent


def agent(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["buildkite-agent", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_agent_reads_meta_data_written_by_a_rest_unblock(client, build, buildkite_agent_env):
    env = buildkite_agent_env(build)
    client.unblock(build, "training_finished", FIELDS)

    assert agent(env, "meta-data", "get", "model-data-path").stdout == FIELDS["model-data-path"]
    assert json.loads(agent(env, "meta-data", "get", "model-env").stdout) == json.loads(FIELDS["model-env"])
    assert set(agent(env, "meta-data", "keys").stdout.split()) == set(FIELDS)

    missing = agent(env, "meta-data", "get", "nope")
    assert missing.returncode == 1 and 'key "nope" not found' in missing.stderr
    assert agent(env, "meta-data", "get", "nope", "--default", "fallback").stdout == "fallback"


def test_agent_meta_data_exists_and_set(build, buildkite_agent_env):
    env = buildkite_agent_env(build)
    assert agent(env, "meta-data", "exists", "model-id").returncode == 100
    assert agent(env, "meta-data", "set", "model-id", "trainkite-1").returncode == 0
    assert agent(env, "meta-data", "exists", "model-id").returncode == 0
    assert agent(env, "meta-data", "set", "from-stdin", stdin="value\n").returncode == 0
    assert agent(env, "meta-data", "get", "from-stdin").stdout == "value\n"

    for empty in ("", "   "):
        refused = agent(env, "meta-data", "set", "blank", empty)
        assert refused.returncode == 1 and "cannot be empty" in refused.stderr
    assert agent(env, "meta-data", "exists", "blank").returncode == 100


def test_agent_annotate_lands_in_the_fake(fake_buildkite, build, buildkite_agent_env):
    env = buildkite_agent_env(build)
    calls = [
        (["Training started", "--style", "info", "--context", "status"], None),
        (["--context", "status", "--append"], " and finished"),
        (["--style", "success", "--context", "wandb"], "[run](x)"),
    ]
    for args, stdin in calls:
        assert agent(env, "annotate", *args, stdin=stdin).returncode == 0

    notes = {a["context"]: a for a in fake_buildkite.annotations(ORG, PIPELINE, build)}
    assert notes["status"]["body"] == "Training started and finished"
    assert notes["wandb"]["style"] == "success"


def test_agent_without_configuration_explains_itself(tmp_path):
    env = {"PATH": f"{AGENT_BIN}:/usr/bin:/bin"}
    result = agent(env, "meta-data", "get", "x")
    assert result.returncode == 1 and "BUILDKITE_AGENT_FAKE_API" in result.stderr

    env["BUILDKITE_AGENT_FAKE_STATE"] = str(tmp_path / "agent.json")
    assert agent(env, "meta-data", "set", "k", "v").returncode == 0
    assert agent(env, "meta-data", "get", "k").stdout == "v"
