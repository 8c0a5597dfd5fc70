"""Infrastructure as code: cfn-lint, checkov and hadolint must be clean, and the properties
that matter for GPU training are asserted on the parsed template (cfn-lint's loader, so
!Ref/!Sub/!GetAtt become Ref/Fn::Sub/Fn::GetAtt dicts).

Tools: cfn-lint and hadolint come from the project's dev extras (same venv as pytest);
checkov lives in its own venv (its pins clash with ours): `.venv-checkov/bin/checkov` or
$CHECKOV_BIN, installed with

    python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov==3.3.30

and always run with --skip-download (no network: it would otherwise try to reach its
platform API). A missing tool fails the test when CI=true and skips it locally.
"""

from __future__ import annotations

import fnmatch

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CFN_DIR = REPO / "infra" / "cloudformation"
TEMPLATES = sorted(CFN_DIR.glob("*.yaml"))
MAIN_TEMPLATE = CFN_DIR / "trainkite.yaml"
DOCKERFILES = [
    REPO / "infra" / "docker" / "Dockerfile.cpu",
    REPO / "infra" / "docker" / "Dockerfile.gpu",
    REPO / "infra" / "docker" / "Dockerfile.serve",
]
AL2023_GPU_AMI = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
IN_CI = os.environ.get("CI", "").lower() == "true"


def _tool(name: str, env_var: str | None = None, extra: tuple[Path, ...] = ()) -> str:
    candidates = [os.environ.get(env_var)] if env_var and os.environ.get(env_var) else []
    candidates += [str(Path(sys.executable).parent / name), *map(str, extra), shutil.which(name)]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = f"{name} not found (looked at {', '.join(c for c in candidates if c)})"
    if IN_CI:
        pytest.fail(message + " - CI must install it (see the docstring of tests/test_infra_lint.py)")
    pytest.skip(message)


def _run(cmd: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO)


# ---------------------------------------------------------------- linters


def test_templates_exist():
    assert MAIN_TEMPLATE in TEMPLATES


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_cfn_lint_clean(template):
    cfn_lint = _tool("cfn-lint")
    # informational checks too (e.g. explicit DeletionPolicy on stateful resources)
    proc = _run([cfn_lint, str(template), "--include-checks", "I"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_checkov_clean():
    checkov = _tool("checkov", "CHECKOV_BIN", (REPO / ".venv-checkov" / "bin" / "checkov",))
    cmd = [checkov, "--framework", "cloudformation", "--compact", "--quiet", "--skip-download"]
    for template in TEMPLATES:
        cmd += ["-f", str(template)]
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile):
    hadolint = _tool("hadolint")
    cmd = [hadolint, "--no-color"]
    if (REPO / ".hadolint.yaml").exists():
        cmd += ["--config", str(REPO / ".hadolint.yaml")]
    proc = _run([*cmd, str(dockerfile)], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------- template properties


@pytest.fixture(scope="module")
def cfn() -> dict:
    from cfnlint.decode import decode

    template, matches = decode(str(MAIN_TEMPLATE))
    assert not matches, matches
    return template


def _of_type(cfn: dict, resource_type: str) -> dict[str, dict]:
    return {k: v for k, v in cfn["Resources"].items() if v["Type"] == resource_type}


def _refs(node) -> set[str]:
    """Every logical ID referenced with Ref anywhere inside node."""
    found: set[str] = set()
    if isinstance(node, dict):
        if set(node) == {"Ref"} and isinstance(node["Ref"], str):
            found.add(node["Ref"])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _lower_keys(node):
    if isinstance(node, dict):
        return {k[:1].lower() + k[1:]: _lower_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_lower_keys(v) for v in node]
    return node


def test_gpu_ami_is_al2023(cfn):
    assert cfn["Parameters"]["GpuAmiId"]["Default"] == AL2023_GPU_AMI
    assert cfn["Parameters"]["GpuAmiId"]["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    lt = cfn["Resources"]["GpuLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert lt["ImageId"] == {"Ref": "GpuAmiId"}
    text = MAIN_TEMPLATE.read_text()
    assert "amazon-linux-2/" not in text and "ECS_AL2_NVIDIA" not in text  # AL2 is end-of-life
    for name, ce in _of_type(cfn, "AWS::Batch::ComputeEnvironment").items():
        assert ce["Properties"]["ComputeResources"]["Ec2Configuration"] == [{"ImageType": "ECS_AL2023_NVIDIA"}], name


def test_gpu_launch_template_and_capacity_provider(cfn):
    lt = cfn["Resources"]["GpuLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert lt["MetadataOptions"]["HttpTokens"] == "required"
    user_data = lt["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "ECS_CLUSTER=${EcsCluster}" in user_data
    assert "ECS_ENABLE_GPU_SUPPORT=true" in user_data
    for lt_name in ("GpuLaunchTemplate", "BatchGpuLaunchTemplate"):
        data = cfn["Resources"][lt_name]["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required", lt_name
        assert all(b["Ebs"]["Encrypted"] for b in data["BlockDeviceMappings"]), lt_name

    asg = cfn["Resources"]["GpuAutoScalingGroup"]["Properties"]
    assert str(asg["MinSize"]) == "0" and str(asg["DesiredCapacity"]) == "0"
    assert asg["NewInstancesProtectedFromScaleIn"] is True
    assert any(t["Key"] == "AmazonECSManaged" for t in asg["Tags"])

    provider = cfn["Resources"]["GpuCapacityProvider"]["Properties"]["AutoScalingGroupProvider"]
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    assert provider["ManagedTerminationProtection"] == "ENABLED"
    assocs = cfn["Resources"]["ClusterCapacityProviders"]["Properties"]
    assert {"Ref": "GpuCapacityProvider"} in assocs["CapacityProviders"]
    cluster = cfn["Resources"]["EcsCluster"]["Properties"]
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]


def test_batch_spot_queue_and_retry_strategy(cfn):
    from tasks.batch import RETRY_STRATEGY

    spot = cfn["Resources"]["BatchSpotComputeEnvironment"]["Properties"]["ComputeResources"]
    assert spot["Type"] == "SPOT"
    assert spot["AllocationStrategy"] == "SPOT_PRICE_CAPACITY_OPTIMIZED"
    assert spot["InstanceTypes"] == {"Ref": "BatchGpuInstanceTypes"}
    types = cfn["Parameters"]["BatchGpuInstanceTypes"]["Default"].split(",")
    assert len(types) >= 3 and {t.split(".")[0] for t in types} >= {"g4dn", "g5"}
    on_demand = cfn["Resources"]["BatchOnDemandComputeEnvironment"]["Properties"]["ComputeResources"]
    assert on_demand["Type"] == "EC2"

    queue = cfn["Resources"]["GpuJobQueue"]["Properties"]
    order = sorted(queue["ComputeEnvironmentOrder"], key=lambda o: o["Order"])
    assert [o["ComputeEnvironment"] for o in order] == [
        {"Ref": "BatchSpotComputeEnvironment"},
        {"Ref": "BatchOnDemandComputeEnvironment"},
    ]
    assert any(a["State"] == "RUNNABLE" and a["Action"] == "CANCEL" for a in queue["JobStateTimeLimitActions"])

    job = cfn["Resources"]["GpuTrainingJobDefinition"]["Properties"]
    retry = job["RetryStrategy"]
    assert retry["Attempts"] == 3
    assert retry["EvaluateOnExit"] == [
        {"OnStatusReason": "Host EC2*", "Action": "RETRY"},
        {"OnReason": "*", "Action": "EXIT"},
    ]
    assert _lower_keys(retry) == RETRY_STRATEGY  # same rules as tasks/batch.py job_definition_spec()
    assert job["Timeout"]["AttemptDurationSeconds"] == {"Ref": "BatchJobTimeoutSeconds"}
    assert job["PlatformCapabilities"] == ["EC2"]
    requirements = {r["Type"] for r in job["ContainerProperties"]["ResourceRequirements"]}
    assert requirements == {"GPU", "VCPU", "MEMORY"}


def test_buckets_are_private_encrypted_versioned_tls_only(cfn):
    buckets = _of_type(cfn, "AWS::S3::Bucket")
    assert {"ArtifactBucket", "ProductionModelBucket"} <= buckets.keys()
    policies = {p["Properties"]["Bucket"]["Ref"]: p for p in _of_type(cfn, "AWS::S3::BucketPolicy").values()}
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        pab = props["PublicAccessBlockConfiguration"]
        assert pab == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }, name
        sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert sse["SSEAlgorithm"] in {"aws:kms", "AES256"}, name
        assert props["VersioningConfiguration"]["Status"] == "Enabled", name
        assert bucket.get("DeletionPolicy") == "Retain", name
        statements = policies[name]["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
        ), f"{name} has no TLS-only policy"


def test_lifecycle_expires_checkpoints_and_prefect_results(cfn):
    rules = cfn["Resources"]["ArtifactBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    by_id = {r["Id"]: r for r in rules}
    checkpoints = by_id["expire-checkpoints"]
    assert checkpoints["TagFilters"] == [{"Key": "trainkite-artifact", "Value": "checkpoint"}]
    assert "ExpirationInDays" in checkpoints and "NoncurrentVersionExpiration" in checkpoints
    assert by_id["expire-prefect-results"]["Prefix"] == "prefect-results/"
    assert "ExpirationInDays" in by_id["expire-prefect-results"]
    assert any("AbortIncompleteMultipartUpload" in r for r in rules)


def test_ecr_repositories(cfn):
    repos = _of_type(cfn, "AWS::ECR::Repository")
    assert {"TrainImageRepository", "ServeImageRepository"} <= repos.keys()
    for name, repo in repos.items():
        assert repo["Properties"]["ImageTagMutability"] == "IMMUTABLE", name
        assert repo["Properties"]["ImageScanningConfiguration"]["ScanOnPush"] is True, name


_SECRETISH = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD|AUTH_STRING)$")


def test_secrets_are_referenced_by_arn_never_plain_env(cfn):
    secrets = set(_of_type(cfn, "AWS::SecretsManager::Secret"))
    assert {"BuildkiteApiTokenSecret", "WandbApiKeySecret", "PrefectApiAuthSecret"} <= secrets

    containers = []
    for td in _of_type(cfn, "AWS::ECS::TaskDefinition").values():
        containers += td["Properties"]["ContainerDefinitions"]
    for jd in _of_type(cfn, "AWS::Batch::JobDefinition").values():
        containers.append(jd["Properties"]["ContainerProperties"])
    assert containers
    secret_refs = set()
    for container in containers:
        for env in container.get("Environment", []):
            assert not _SECRETISH.search(env["Name"]), f"{env['Name']} must be a container secret, not env"
        if "Secrets" in container:
            refs = _refs(container["Secrets"]) - {"AWS::NoValue"}  # Fn::If on PrefectAuthMode
            assert refs and refs <= secrets, refs  # ValueFrom = Ref <secret> = its ARN
            secret_refs |= refs
    assert secret_refs == {"BuildkiteApiTokenSecret", "WandbApiKeySecret", "PrefectApiAuthSecret"}

    batch_secrets = cfn["Resources"]["GpuTrainingJobDefinition"]["Properties"]["ContainerProperties"]["Secrets"]
    assert {s["Name"] for s in batch_secrets} == {"WANDB_API_KEY", "BUILDKITE_API_TOKEN"}
    worker = cfn["Resources"]["PrefectWorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    assert _refs(worker["Secrets"]) - {"AWS::NoValue"} == {"PrefectApiAuthSecret"}  # NoValue: PrefectAuthMode=none

    # The training execution role may read exactly the pipeline's secrets and nothing else.
    statements = cfn["Resources"]["TrainingExecutionRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    secret_statements = [s for s in statements if s["Action"] == "secretsmanager:GetSecretValue"]
    assert len(secret_statements) == 1
    assert _refs(secret_statements[0]["Resource"]) == {
        "BuildkiteApiTokenSecret",
        "WandbApiKeySecret",
        "PrefectApiAuthSecret",
    }


def test_prefect_worker_and_observer_queue(cfn):
    worker = cfn["Resources"]["PrefectWorkerTaskDefinition"]["Properties"]
    assert worker["RequiresCompatibilities"] == ["FARGATE"]
    env = {e["Name"]: e["Value"] for e in worker["ContainerDefinitions"][0]["Environment"]}
    assert env["PREFECT_API_URL"] == {"Ref": "PrefectApiUrl"}
    assert env["PREFECT_INTEGRATIONS_AWS_ECS_OBSERVER_SQS_QUEUE_NAME"] == {
        "Fn::GetAtt": ["EcsEventsQueue", "QueueName"]
    }
    assert cfn["Parameters"]["EcsEventsQueueName"]["Default"] == "prefect-ecs-tasks-events"
    assert cfn["Resources"]["EcsEventsQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["EcsEventsDeadLetterQueue", "Arn"]
    }
    rule = cfn["Resources"]["EcsTaskStateChangeRule"]["Properties"]
    assert rule["EventPattern"]["source"] == ["aws.ecs"]
    assert rule["EventPattern"]["detail-type"] == ["ECS Task State Change"]
    assert rule["Targets"][0]["Arn"] == {"Fn::GetAtt": ["EcsEventsQueue", "Arn"]}
    queue_policy = cfn["Resources"]["EcsEventsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert queue_policy["Principal"] == {"Service": "events.amazonaws.com"}
    assert queue_policy["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": ["EcsTaskStateChangeRule", "Arn"]}


def test_the_training_role_may_register_only_per_image_job_definitions(cfn):
    """train-batch registers `<stack definition>-img-<hash>` for a build's image (tasks/batch.py); the role may
    register exactly those names, submit with them, and pass only the two training roles."""
    import hashlib

    role = cfn["Resources"]["TrainingTaskRole"]["Properties"]
    statements = {st["Sid"]: st for pol in role["Policies"] for st in pol["PolicyDocument"]["Statement"]}
    register = statements["RegisterPerImageJobDefinitions"]
    assert register["Action"] == "batch:RegisterJobDefinition"
    pattern = register["Resource"]["Fn::Sub"].rsplit("job-definition/", 1)[1]
    definition = cfn["Resources"]["GpuTrainingJobDefinition"]["Properties"]["JobDefinitionName"]["Fn::Sub"]
    ours = f"{definition}-img-{hashlib.sha256(b'img:1').hexdigest()[:12]}"
    assert fnmatch.fnmatchcase(ours, pattern) and not fnmatch.fnmatchcase(definition, pattern)
    submit = [
        r["Fn::Sub"].rsplit("job-definition/", 1)[1]
        for r in statements["SubmitToOurQueueWithOurJobDefinition"]["Resource"]
        if "Fn::Sub" in r
    ]
    assert any(fnmatch.fnmatchcase(f"{ours}:1", r) for r in submit)
    passing = cfn["Resources"]["TrainingRolePassesTrainingRoles"]["Properties"]
    assert passing["Roles"] == [{"Ref": "TrainingTaskRole"}]
    assert passing["PolicyDocument"]["Statement"] == [
        {
            "Sid": "PassOnlyTheTrainingRolesToThoseDefinitions",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": [{"Fn::GetAtt": ["TrainingTaskRole", "Arn"]}, {"Fn::GetAtt": ["TrainingExecutionRole", "Arn"]}],
        }
    ]


def test_checkov_skips_are_justified():
    text = MAIN_TEMPLATE.read_text()
    skips = re.findall(r"- id: (CKV2?_AWS_\d+)\n\s+comment: (.+)", text)
    assert len(skips) == text.count("- id: CKV")
    for check_id, comment in skips:
        assert len(comment.strip()) >= 30, f"{check_id}: justification too short"


def test_outputs_for_the_readme(cfn):
    expected = {
        "ArtifactBucketName",
        "ArtifactsRoot",
        "PrefectResultsUri",
        "ProductionModelBucketName",
        "TrainImageRepositoryUri",
        "ServeImageRepositoryUri",
        "EcsClusterName",
        "GpuCapacityProviderName",
        "BatchJobQueueArn",
        "BatchJobDefinitionArn",
        "PrefectWorkerRoleArn",
        "TrainingTaskRoleArn",
        "TrainingExecutionRoleArn",
        "DeployTaskRoleArn",
        "SageMakerExecutionRoleArn",
        "BuildkiteApiTokenSecretArn",
        "WandbApiKeySecretArn",
        "PrefectApiAuthSecretArn",
        "EcsEventsQueueName",
        "TrainingLogGroupName",
    }
    assert expected <= cfn["Outputs"].keys(), expected - cfn["Outputs"].keys()
    for name, param in cfn["Parameters"].items():
        assert param.get("Description"), f"parameter {name} has no description"


# ---------------------------------------------------------------- images


def _instructions(dockerfile: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_contract(dockerfile):
    lines = _instructions(dockerfile)
    assert 'ENTRYPOINT ["trainkite-container"]' in lines
    assert "EXPOSE 8080" in lines
    assert any("com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in ln for ln in lines)
    assert "WORKDIR /opt/app" in lines
    users = [ln.split(None, 1)[1] for ln in lines if ln.startswith("USER ")]
    assert users and not users[-1].startswith(("root", "0")), "final USER must not be root"
    installs_project = re.compile(
        r"pip install (--no-cache-dir )?(--no-deps )?(-c requirements.lock )?\"?\.(\[encoder\])?\"?(\s|$)"
    )
    assert any(installs_project.search(ln) for ln in lines)
    for image in _base_images(lines):
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"


def _base_images(lines: list[str]) -> list[str]:
    """FROM images, with `${ARG}` resolved to the ARG's default (build-images.sh --local-base overrides it)."""
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", "\n".join(lines), re.M))
    return [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], ln.split()[1]) for ln in lines if ln.startswith("FROM ")
    ]


def test_cpu_image_uses_cpu_torch_on_slim_python():
    lines = _instructions(DOCKERFILES[0])
    assert all(re.match(r"python:3\.11[.\d]*-slim", image) for image in _base_images(lines))
    assert any("download.pytorch.org/whl/cpu" in ln for ln in lines)


# The CUDA of torch's wheel on PyPI for each torch the GPU image may install (PyPI's torch==2.13.0 pulls
# nvidia-cuda-runtime 13.0.x and nvidia-cudnn-cu13), and the oldest Linux driver that runs that CUDA.
PYPI_TORCH_CUDA = {"2.13.0": ("13", "13.0", 580)}


def test_gpu_image_cuda_matches_torch_wheel():
    """CUDA comes from torch's wheels, so the image's claims are about that torch: the check the build runs, the
    Dockerfile's and the README's CUDA and driver statements."""
    lines = _instructions(DOCKERFILES[1])
    text = "\n".join(lines)
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M).group(1)
    major, cuda, driver = PYPI_TORCH_CUDA[torch_version]
    assert re.search(r"^ARG TORCH_CUDA_MAJOR=(\d+)$", text, re.M).group(1) == major
    assert 'pip install --no-cache-dir "torch===${TORCH_VERSION}"' in text  # exact: no +cpu local version
    assert "torch.version.cuda" in text and "${TORCH_CUDA_MAJOR}." in text  # the build checks what it got
    assert not any("nvidia/cuda" in image for image in _base_images(lines))
    assert all(re.match(r"python:3\.11[.\d]*-slim", image) for image in _base_images(lines))
    for doc in (DOCKERFILES[1], REPO / "infra" / "docker" / "README.md"):
        body = doc.read_text()
        assert f"CUDA {cuda}" in body and f"driver >= {driver}" in body, doc
        assert "cu128" not in body and "12.8" not in body, doc


def test_dockerignore_keeps_context_small():
    entries = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".venv-*", "tests"} <= entries
    assert "README.md" not in entries and "pyproject.toml" not in entries  # needed by `pip install .`
