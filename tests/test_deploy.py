"""The deploy flow: SageMaker create path against moto's server, the update path with botocore's Stubber
(moto has no UpdateEndpoint), the guards, approval, and the deployment log."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import UTC, datetime

import boto3
import pytest
import requests
from botocore.response import StreamingBody
from botocore.stub import Stubber
from typer.testing import CliRunner

from tasks import deploy as dp, deploy_log
from tasks.package import list_archive
from tests.fixtures_models import flush_prefect_logs, model_factory, trained_model_dir  # noqa: F401

from trainkite.store import open_store

pytestmark = [
    # trainkite.* loggers are Prefect "extra loggers" in tests; outside a flow run they warn and log locally.
    pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning"),
]

ROLE = "arn:aws:iam::123456789012:role/trainkite-sagemaker"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/trainkite:cpu-abc123"
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:serving-db-AbCdEf"


def _params(params_factory, **extra):
    return params_factory(
        **{
            "deploy.production_root": "s3://prod-models/serving",
            "deploy.execution_role_arn": ROLE,
            "deploy.instance_type": "ml.m5.large",
            "deploy.wait_delay_s": 0,
            **extra,
        }
    )


def _set_lineage(folder, **lineage):
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    m["lineage"].update(lineage)
    path.write_text(json.dumps(m))


def _queue_smoke_reply(moto_url: str, model_id: str) -> None:
    body = {
        "model_id": model_id,
        "predictions": [{"label": "positive", "scores": {"positive": 0.9}, "model_id": model_id}],
    }
    requests.post(
        f"{moto_url}/moto-api/static/sagemaker/endpoint-results",
        timeout=10,
        json={
            "results": [
                {"Body": json.dumps(body), "ContentType": "application/json", "InvokedProductionVariant": "AllTraffic"}
            ]
        },
    )


def _cli(*args):
    from cli.main import app

    return CliRunner().invoke(app, list(args))


# --- create path, end to end against moto ---------------------------------------------------------------


def test_sagemaker_create_path(prefect_api, aws, model_factory, params_factory, monkeypatch):  # noqa: F811
    from flows.deploy import deploy

    folder = model_factory("sentiment-41")
    _set_lineage(
        folder,
        docker_image=IMAGE,
        build={"url": "https://buildkite.com/acme/ml/builds/41"},
        git={"commit": "0123abcd", "dirty": False},
    )
    monkeypatch.setenv(
        "TRAINKITE_SERVING_SECRET_ARNS", json.dumps({"DB_SECRET_ARN": SECRET_ARN, "DB_PASSWORD": "hunter2-plaintext"})
    )
    boto3.client("s3").create_bucket(Bucket="prod-models")
    _queue_smoke_reply(aws, "sentiment-41")

    result = deploy(model_id="sentiment-41", target="sagemaker", params=_params(params_factory), approved_by="alice")

    assert result["deployed"] and result["action"] == "created" and result["endpoint"] == "trainkite-sentiment"
    # model.tar.gz in the production bucket: files at the root, the bytes we built
    uri = "s3://prod-models/serving/sentiment/sentiment-41/model.tar.gz"
    assert result["model_data_url"] == uri
    obj = boto3.client("s3").get_object(Bucket="prod-models", Key="serving/sentiment/sentiment-41/model.tar.gz")
    data = obj["Body"].read()
    import hashlib

    assert hashlib.sha256(data).hexdigest() == result["model_data_sha256"]
    names = list_archive(data)
    assert (
        "manifest.json" in names
        and "weights.safetensors" in names
        and all("/" not in n or n.startswith(("data/", "plots/")) for n in names)
    )
    sm = boto3.client("sagemaker")
    model = sm.describe_model(ModelName=result["sagemaker_model"])
    assert "sentiment-41" in result["sagemaker_model"] and "sentiment-41" in result["endpoint_config"]
    assert model["PrimaryContainer"]["Image"] == IMAGE and model["PrimaryContainer"]["ModelDataUrl"] == uri
    assert model["PrimaryContainer"]["Environment"] == {
        "TRAINKITE_MODEL_ID": "sentiment-41",
        "TRAINKITE_MODEL_URI": uri,
        "DB_SECRET_ARN": SECRET_ARN,
    }
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=model["ModelArn"])["Tags"]}
    assert tags["model-id"] == "sentiment-41" and tags["commit"] == "0123abcd"
    assert tags["build-url"] == "https://buildkite.com/acme/ml/builds/41"
    ep = sm.describe_endpoint(EndpointName="trainkite-sentiment")
    assert ep["EndpointStatus"] == "InService" and ep["EndpointConfigName"] == result["endpoint_config"]
    cfg = sm.describe_endpoint_config(EndpointConfigName=result["endpoint_config"])
    assert cfg["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    ep_tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=ep["EndpointArn"])["Tags"]}
    assert ep_tags["model-id"] == "sentiment-41"

    [entry] = deploy_log.read_log(open_store())
    assert entry["status"] == "deployed" and entry["approved_by"] == "alice" and entry["target"] == "sagemaker"
    assert entry["endpoint_config"] == result["endpoint_config"] and entry["previous_model_id"] is None
    out = _cli("deployments", "list", "--json")
    assert out.exit_code == 0, out.output
    live = json.loads(out.stdout)["live"]
    assert [(r["target"], r["endpoint"], r["model_id"]) for r in live] == [
        ("sagemaker", "trainkite-sentiment", "sentiment-41")
    ]
    # no secret value anywhere we wrote
    written = json.dumps([model, tags, ep_tags, entry], default=str)
    for secret in ("testing-secret", "hunter2-plaintext"):
        assert secret not in written and secret not in out.output


def test_sagemaker_smoke_failure_on_create_is_recorded(prefect_api, aws, model_factory, params_factory):  # noqa: F811
    from flows.deploy import deploy

    model_factory("sentiment-42")
    boto3.client("s3").create_bucket(Bucket="prod-models")
    _queue_smoke_reply(aws, "some-other-model")
    with pytest.raises(dp.DeployError, match="serves model some-other-model, not sentiment-42"):
        deploy(model_id="sentiment-42", target="sagemaker", params=_params(params_factory, **{"deploy.image": IMAGE}))
    [entry] = deploy_log.read_log(open_store())
    assert entry["status"] == "failed" and "no previous config" in entry["error"]
    assert deploy_log.live_everywhere([entry]) == []


# --- update path: Stubber (moto raises NotImplementedError for UpdateEndpoint) ----------------------------


def _clients():
    kw = {"region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "y"}
    sm, rt = boto3.client("sagemaker", **kw), boto3.client("sagemaker-runtime", **kw)
    return sm, Stubber(sm), rt, Stubber(rt)


def _desc(status: str, config: str, reason: str | None = None) -> dict:
    now = datetime.now(UTC)
    out = {
        "EndpointName": "ep",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/ep",
        "EndpointStatus": status,
        "EndpointConfigName": config,
        "CreationTime": now,
        "LastModifiedTime": now,
    }
    if reason:
        out["FailureReason"] = reason
    return out


def _reply(model_id: str) -> dict:
    body = json.dumps(
        {"model_id": model_id, "predictions": [{"label": "neutral", "scores": {"neutral": 1.0}, "model_id": model_id}]}
    ).encode()
    return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"}


EP = {"EndpointName": "ep"}
ARN = {"EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/ep"}
TAGS = [{"Key": "model-id", "Value": "m-new"}]


def _roll_out(sm, rt):
    return dp.roll_out(
        sm,
        rt,
        endpoint="ep",
        config="cfg-new",
        model_id="m-new",
        tags=TAGS,
        delay_s=0,
        timeout_s=60,
        sleep=lambda s: None,
    )


def test_update_path_switches_config_then_deletes_the_old_one():
    sm, st, rt, rst = _clients()
    st.add_response("describe_endpoint", _desc("InService", "cfg-old"), EP)
    st.add_response("update_endpoint", ARN, {"EndpointName": "ep", "EndpointConfigName": "cfg-new"})
    st.add_response("describe_endpoint", _desc("Updating", "cfg-old"), EP)
    st.add_response("describe_endpoint", _desc("InService", "cfg-new"), EP)
    rst.add_response(
        "invoke_endpoint",
        _reply("m-new"),
        {
            "EndpointName": "ep",
            "ContentType": "application/json",
            "Accept": "application/json",
            "Body": json.dumps({"instances": [dp.SMOKE_TEXT]}).encode(),
        },
    )
    with st, rst:
        result = _roll_out(sm, rt)
        st.assert_no_pending_responses()
    assert result["action"] == "updated" and result["previous_config"] == "cfg-old"
    assert result["smoke"]["model_id"] == "m-new"

    sm, st, _, _ = _clients()
    st.add_response(
        "describe_endpoint_config",
        {
            "EndpointConfigName": "cfg-old",
            "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:endpoint-config/cfg-old",
            "CreationTime": datetime.now(UTC),
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": "model-old"}],
        },
        {"EndpointConfigName": "cfg-old"},
    )
    st.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "cfg-old"})
    st.add_response("delete_model", {}, {"ModelName": "model-old"})
    with st:
        assert dp.delete_superseded(sm, "cfg-old") == ["endpoint-config/cfg-old", "model/model-old"]
        st.assert_no_pending_responses()


def test_update_that_sagemaker_rolled_back_silently_fails_clearly():
    sm, st, rt, rst = _clients()
    st.add_response("describe_endpoint", _desc("InService", "cfg-old"), EP)
    st.add_response("update_endpoint", ARN, {"EndpointName": "ep", "EndpointConfigName": "cfg-new"})
    st.add_response("describe_endpoint", _desc("Updating", "cfg-old"), EP)
    st.add_response("describe_endpoint", _desc("RollingBack", "cfg-old"), EP)
    # InService again, but on the OLD config: the update did not take.
    st.add_response("describe_endpoint", _desc("InService", "cfg-old", "alarm ModelLatency fired"), EP)
    with st, rst, pytest.raises(dp.DeployError) as err:
        _roll_out(sm, rt)
    assert "InService on config cfg-old, not cfg-new" in str(err.value)
    assert "rolled the update back (alarm ModelLatency fired)" in str(err.value)
    st.assert_no_pending_responses()  # and no smoke test was attempted: the runtime stub had nothing queued


def test_smoke_test_failure_rolls_back_to_the_previous_config():
    sm, st, rt, rst = _clients()
    st.add_response("describe_endpoint", _desc("InService", "cfg-old"), EP)
    st.add_response("update_endpoint", ARN, {"EndpointName": "ep", "EndpointConfigName": "cfg-new"})
    st.add_response("describe_endpoint", _desc("InService", "cfg-new"), EP)
    rst.add_client_error(
        "invoke_endpoint",
        service_error_code="ModelError",
        http_status_code=424,
        service_message="Received server error (500) from primary",
    )
    st.add_response("update_endpoint", ARN, {"EndpointName": "ep", "EndpointConfigName": "cfg-old"})
    st.add_response("describe_endpoint", _desc("Updating", "cfg-new"), EP)
    st.add_response("describe_endpoint", _desc("InService", "cfg-old"), EP)
    with st, rst, pytest.raises(dp.DeployError) as err:
        _roll_out(sm, rt)
    st.assert_no_pending_responses()
    assert "smoke test of ep failed" in str(err.value) and "rolled endpoint ep back to config cfg-old" in str(err.value)
    assert err.value.details == {"previous_config": "cfg-old", "rolled_back": True}


def test_smoke_test_of_the_wrong_model_rolls_back_and_a_failed_rollback_says_so():
    sm, st, rt, rst = _clients()
    st.add_response("describe_endpoint", _desc("InService", "cfg-old"), EP)
    st.add_response("update_endpoint", ARN, {"EndpointName": "ep", "EndpointConfigName": "cfg-new"})
    st.add_response("describe_endpoint", _desc("InService", "cfg-new"), EP)
    rst.add_response("invoke_endpoint", _reply("m-stale"))
    st.add_response("update_endpoint", ARN, {"EndpointName": "ep", "EndpointConfigName": "cfg-old"})
    st.add_response("describe_endpoint", _desc("Failed", "cfg-new", "capacity"), EP)
    with st, rst, pytest.raises(dp.DeployError) as err:
        _roll_out(sm, rt)
    assert "serves model m-stale, not m-new" in str(err.value)
    assert "rolling back to cfg-old ALSO failed" in str(err.value) and "capacity" in str(err.value)


@pytest.mark.parametrize(
    "status, message", [("Updating", "wait for it to finish"), ("Failed", "delete it or deploy to another name")]
)
def test_busy_or_failed_endpoint_is_not_touched(status, message):
    sm, st, rt, rst = _clients()
    st.add_response("describe_endpoint", _desc(status, "cfg-old"), EP)
    with st, rst, pytest.raises(dp.DeployError, match=message):
        _roll_out(sm, rt)
    st.assert_no_pending_responses()


def test_aws_refusals_are_one_line_errors():
    sm, st, _, _ = _clients()
    st.add_client_error(
        "create_model",
        service_error_code="AccessDeniedException",
        service_message="not authorized to perform: sagemaker:CreateModel",
    )
    with st, pytest.raises(dp.DeployError, match="create SageMaker model n: AccessDeniedException: not auth"):
        dp.create_model_and_config(
            sm,
            name="n",
            image=IMAGE,
            role_arn=ROLE,
            model_data_url="s3://b/k",
            env={},
            tags=TAGS,
            instance_type="ml.m5.large",
            instance_count=1,
        )


def test_names_tags_and_env_follow_sagemaker_rules(monkeypatch):
    name = dp.resource_name("local-20261127T101500Z-3f9a1c_x.y", stamp="20261127101500")
    assert name.startswith("local-20261127T101500Z-3f9a1c-x-y-20261127101500-") and len(name) <= 63
    assert len(dp.resource_name("a" * 128)) == 63
    with pytest.raises(Exception, match="letters, digits"):
        dp.endpoint_name("bad_name!", "sentiment")
    monkeypatch.setenv("TRAINKITE_SERVING_SECRET_ARNS", json.dumps({"API_TOKEN": "plain-value"}))
    assert dp.serving_env("m", "s3://b/k") == {"TRAINKITE_MODEL_ID": "m", "TRAINKITE_MODEL_URI": "s3://b/k"}


# --- guards and the local target, through the CLI --------------------------------------------------------


def test_guards_refuse_cleanly(model_factory, tk_home):  # noqa: F811
    folder = model_factory("tampered-1")
    with open(folder / "weights.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 16)
    out = _cli("deploy", "tampered-1", "--target", "local")
    assert out.exit_code == 1 and "weights.safetensors does not match its sha256" in out.output
    assert "Traceback" not in out.output

    half = tk_home / "artifacts" / "sentiment" / "half-1"
    half.mkdir(parents=True)
    (half / "weights.safetensors").write_bytes(b"partial")
    out = _cli("deploy", "half-1", "--target", "local", "--json")
    assert out.exit_code == 1 and "has no manifest.json" in json.loads(out.stdout)["error"]

    out = _cli("deploy", "no-such-model", "--target", "local")
    assert out.exit_code == 2 and "no model 'no-such-model'" in out.output

    model_factory("ok-1")
    out = _cli("deploy", "ok-1", "--target", "sagemaker")
    assert out.exit_code == 2 and "deploy.production_root" in out.output and "Traceback" not in out.output


def test_local_deploy_older_than_live_is_refused_unless_allowed(prefect_api, model_factory):  # noqa: F811
    from tests.conftest import _free_port

    model_factory("older-1", created_at="2026-11-01T10:00:00+00:00")
    model_factory("newer-2", created_at="2026-11-02T10:00:00+00:00")
    port, other = str(_free_port()), str(_free_port())
    try:
        out = _cli("deploy", "newer-2", "--target", "local", "--approved-by", "bob", "--port", port, "--json")
        assert out.exit_code == 0, out.output
        result = json.loads(out.stdout)
        assert result["endpoint"] == f"http://127.0.0.1:{port}" and result["approved_by"] == "bob"
        assert result["serve_command"] == f"trainkite serve newer-2 --port {port}"

        out = _cli("deploy", "older-1", "--target", "local", "--port", port)
        assert out.exit_code == 2 and "older than newer-2" in out.output and "--allow-older" in out.output
        assert "Traceback" not in out.output
        # another local endpoint has nothing live: no conflict there
        assert _cli("deploy", "older-1", "--target", "local", "--port", other, "--json").exit_code == 0

        out = _cli("deploy", "older-1", "--target", "local", "--port", port, "--allow-older", "--json")
        assert out.exit_code == 0, out.output
        live = {r["endpoint"]: r for r in json.loads(_cli("deployments", "list", "--json").stdout)["live"]}
        assert live[f"http://127.0.0.1:{port}"]["model_id"] == "older-1"
        assert live[f"http://127.0.0.1:{port}"]["previous_model_id"] == "newer-2"
        human = _cli("deployments", "list")
        assert human.exit_code == 0 and "older-1" in human.output
    finally:
        _cli("deployments", "stop")


def test_approval_approve_and_timeout(prefect_api, model_factory, params_factory):  # noqa: F811
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.flow_runs import resume_flow_run

    from flows.deploy import deploy

    model_factory("champ-1", created_at="2026-11-01T10:00:00+00:00")
    model_factory("cand-2", created_at="2026-11-02T10:00:00+00:00")
    params = params_factory()
    assert deploy(model_id="champ-1", target="local", params=params)["deployed"]
    seen = {}
    started = datetime.now(UTC)

    def approve():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with get_client(sync_client=True) as c:
                paused = c.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                    )
                )
                # Only this test's run: the session's server may hold other paused runs.
                runs = [r for r in paused if r.parameters.get("model_id") == "cand-2" and r.created >= started]
                if runs:
                    keyset = runs[0].state.state_details.run_input_keyset
                    # Prefect sets the Paused state before it saves the form's schema and description,
                    # so a run can be seen paused a moment before its form can be read or answered.
                    try:
                        seen["form"] = c.read_flow_run_input(runs[0].id, keyset["description"])
                    except PrefectHTTPStatusError as exc:
                        if exc.response.status_code != 404:
                            raise
                        time.sleep(0.2)
                        continue
                    resume_flow_run(runs[0].id, run_input={"approve": True, "note": "beats champ-1"})
                    return
            time.sleep(0.2)

    t = threading.Thread(target=approve)
    t.start()
    result = deploy(model_id="cand-2", target="local", params=params, require_approval=True, approval_timeout_s=10)
    t.join()
    assert result["deployed"] and result["approved_by"] == "prefect-ui" and result["approval_note"] == "beats champ-1"
    assert "champ-1" in seen["form"] and "cand-2" in seen["form"] and "evaluation_accuracy" in seen["form"]

    state = deploy(
        model_id="cand-2", target="local", params=params, require_approval=True, approval_timeout_s=2, return_state=True
    )
    # Failed every time, not only when Prefect's pause-expiry service happens to fire before the run ends.
    assert state.is_failed(), state
    last = deploy_log.read_log(open_store())[-1]
    assert last["status"] == "approval_timeout" and last["model_id"] == "cand-2"
    assert deploy_log.live(deploy_log.read_log(open_store()), "local", "http://127.0.0.1:8080")["model_id"] == "cand-2"


def test_deployment_log_is_safe_under_concurrent_writers(tmp_path):
    store = open_store(str(tmp_path / "store"))

    def write(i):
        deploy_log.write(
            store,
            deploy_log.new_record(
                model_id=f"m-{i}", model_name="sentiment", target="local", endpoint="e", status="deployed"
            ),
        )

    threads = [threading.Thread(target=write, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = deploy_log.read_log(store)
    assert sorted(r["model_id"] for r in records) == sorted(f"m-{i}" for i in range(20))
    assert deploy_log.live(records, "local", "e") == records[-1]


def test_cli_refusals_happen_before_prefect_is_imported(model_factory, tk_home):  # noqa: F811
    """Prefect reads PREFECT_API_URL once; `trainkite deploy` sets it (ensure_api) only after its guards."""
    import subprocess
    import sys

    from tests.conftest import REPO

    model_factory("pre-1")
    code = (
        "import sys; import cli.main; from params import load_params; "
        "from cli.serving_commands import _preflight; "
        "_preflight(load_params(None, []), 'pre-1', 'local', 8080, False); "
        "assert 'prefect' not in sys.modules, 'prefect imported before ensure_api'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
