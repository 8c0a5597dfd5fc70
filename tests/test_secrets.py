"""Secrets kept, only safetensors loaded, nothing reaches outside the store.

Canary secrets (a Buildkite API token, a W&B API key, an AWS secret key: unique random strings) are put
in the environment of a real end-to-end training (the train flow in a subprocess, inside a simulated
Buildkite build, W&B offline on, artifacts to S3 on moto, notify against the fake Buildkite), and of a
failing variant; then everything the runs left behind is searched for them.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.process_helpers import repo_head

from tests.conftest import REPO
from tests.fakes.buildkite_fixtures import ORG, PIPELINE
from tests.fixtures_models import copy_model, flush_prefect_logs, trained_model_dir  # noqa: F401
from trainkite.errors import IntegrityError, UserInputError

pytestmark = pytest.mark.filterwarnings("ignore:Logger 'trainkite:UserWarning")

# The train flow as a Buildkite agent's launch would run it (`trainkite train` itself refuses a dirty git
# tree inside a build, and this checkout may be mid-edit).
RUN = r"""
import json, sys, traceback
from trainkite.home import configure_quiet_offline_env
configure_quiet_offline_env()
from buildkite.context import BuildContext
from flows.train import train
from params import load_params
build = BuildContext.from_env()
state = train(params=load_params(None, sys.argv[1:]), model_id=build.model_id, build=build, return_state=True)
print(json.dumps({"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value}), flush=True)
try:
    print(json.dumps(state.result()))
except Exception as exc:
    print("EXCEPTION", repr(exc), str(exc), file=sys.stderr)
    traceback.print_exc()
    sys.exit(1)
"""
SMALL = ["preprocess.buckets=4096", "model.embedding_dim=16", "train.epochs=2"]


def _canaries() -> dict[str, str]:
    return {
        "BUILDKITE_API_TOKEN": "bkua_" + secrets.token_hex(20),
        "WANDB_API_KEY": secrets.token_hex(20),
        "AWS_SECRET_ACCESS_KEY": "awscanary" + secrets.token_hex(16),
    }


def _leaks(blob: bytes | str, canaries: dict[str, str]) -> list[str]:
    data = blob.encode() if isinstance(blob, str) else blob
    return [name for name, value in canaries.items() if value.encode() in data]


def _scan_tree(root: Path, canaries: dict[str, str]) -> tuple[int, dict[str, list[str]]]:
    found, n = {}, 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            n += 1
            if hits := _leaks(path.read_bytes(), canaries):
                found[str(path)] = hits
    return n, found


def _api(url: str, path: str, body: dict) -> list:
    out, offset = [], 0
    while True:
        page = requests.post(f"{url}/{path}", json={**body, "limit": 200, "offset": offset}, timeout=30)
        page.raise_for_status()
        out += page.json()
        if len(page.json()) < 200:
            return out
        offset += 200


@pytest.fixture
def bucket(aws):
    import boto3

    boto3.session.Session().client("s3").create_bucket(Bucket="models")
    return aws


def test_canary_secrets_never_leave_the_environment(prefect_api, bucket, fake_buildkite, tmp_path):
    canaries = _canaries()
    fake_buildkite.add_token(canaries["BUILDKITE_API_TOKEN"], scopes=("read_builds", "write_builds"))
    ok_build = fake_buildkite.create_build(ORG, PIPELINE)
    bad_build = fake_buildkite.create_build(ORG, PIPELINE)

    def env(number: int, home: Path, token: str) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDKITE", "AWS_", "WANDB_"))}
        e.update(
            {
                "TRAINKITE_HOME": str(home),
                "WANDB_MODE": "offline",
                "WANDB_API_KEY": canaries["WANDB_API_KEY"],
                "AWS_ENDPOINT_URL": bucket,
                "AWS_ACCESS_KEY_ID": "AKIACANARYKEYID",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_SECRET_ACCESS_KEY": canaries["AWS_SECRET_ACCESS_KEY"],
                "PREFECT_LOGGING_LEVEL": "DEBUG",
                "BUILDKITE": "true",
                "BUILDKITE_BUILD_NUMBER": str(number),
                "BUILDKITE_PIPELINE_SLUG": PIPELINE,
                "BUILDKITE_ORGANIZATION_SLUG": ORG,
                "BUILDKITE_API_URL": fake_buildkite.url,
                "BUILDKITE_API_TOKEN": token,
                "BUILDKITE_BUILD_URL": f"https://buildkite.com/{ORG}/{PIPELINE}/builds/{number}",
                "BUILDKITE_COMMIT": repo_head(),
                "BUILDKITE_BRANCH": "main",
                # Secrets the agent itself holds, which the run must not copy anywhere either.
                "BUILDKITE_AGENT_ACCESS_TOKEN": canaries["BUILDKITE_API_TOKEN"][::-1],
            }
        )
        return e

    homes = {"ok": tmp_path / "ok", "bad": tmp_path / "bad"}
    sets = {
        "ok": [*SMALL, 'tracking.backend="wandb"', 'artifacts.root="s3://models/secrets"'],
        # The failing variant: bad data, and a token Buildkite rejects (401) when the hook releases the build.
        "bad": [
            *SMALL,
            'artifacts.root="s3://models/secrets-bad"',
            'data.query="SELECT text, sentiment AS label FROM comments WHERE 1=0"',
        ],
    }
    procs = {
        "ok": subprocess.Popen(
            [sys.executable, "-c", RUN, *sets["ok"]],
            cwd=REPO,
            text=True,
            env=env(ok_build, homes["ok"], canaries["BUILDKITE_API_TOKEN"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
        "bad": subprocess.Popen(
            [sys.executable, "-c", RUN, *sets["bad"]],
            cwd=REPO,
            text=True,
            env=env(bad_build, homes["bad"], "bkua_" + canaries["WANDB_API_KEY"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ),
    }
    outputs = {name: p.communicate(timeout=300) for name, p in procs.items()}
    assert procs["ok"].returncode == 0, outputs["ok"][1][-4000:]
    assert procs["bad"].returncode == 1 and "EXCEPTION DataError" in outputs["bad"][1], outputs["bad"][1][-4000:]
    runs = {name: json.loads(out.splitlines()[0])["flow_run_id"] for name, (out, _) in outputs.items()}
    canaries["BUILDKITE_AGENT_ACCESS_TOKEN"] = canaries["BUILDKITE_API_TOKEN"][::-1]
    canaries["rejected token"] = "bkua_" + canaries["WANDB_API_KEY"]

    # Sanity: the secrets were really in use, so finding none below means something.
    auth = [r["headers"].get("Authorization", "") for r in fake_buildkite.requests]
    assert f"Bearer {canaries['BUILDKITE_API_TOKEN']}" in auth and f"Bearer {canaries['rejected token']}" in auth
    assert fake_buildkite.build(ORG, PIPELINE, ok_build)["meta_data"]["training-status"] == "passed"

    searched: dict[str, int] = {}
    leaks: dict[str, list[str]] = {}

    def check(where: str, blob, n: int = 1) -> None:
        searched[where] = searched.get(where, 0) + n
        if hits := _leaks(json.dumps(blob, default=str) if not isinstance(blob, bytes | str) else blob, canaries):
            leaks[where] = hits

    for name, (out, err) in outputs.items():
        check(f"{name} run stdout", out)
        check(f"{name} run stderr (incl. the failing run's exception and traceback)", err)
    for name, run_id in runs.items():
        logs = _api(prefect_api, "logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}})
        assert logs or name == "bad", "no Prefect logs for the run"
        check("Prefect logs (API)", logs, len(logs))
        check(
            "Prefect flow run (parameters, state message)",
            requests.get(f"{prefect_api}/flow_runs/{run_id}", timeout=30).json(),
        )
        tasks = _api(prefect_api, "task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        check("Prefect task runs", tasks, len(tasks))
        arts = _api(prefect_api, "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
        check("Prefect artifacts", arts, len(arts))
    server_log = Path(os.environ["PREFECT_HOME"]).parent / "prefect-server.log"
    if server_log.is_file():
        check("Prefect server log", server_log.read_bytes())

    import boto3

    s3 = boto3.session.Session().client("s3")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="models")
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("/manifest.json") for k in keys)
    for key in keys:
        check(
            "S3 objects (manifest, weights, params, metrics, snapshot, staged run files)",
            s3.get_object(Bucket="models", Key=key)["Body"].read(),
        )
    for name, home in homes.items():
        n, found = _scan_tree(home, canaries)  # runs/, caches and W&B offline run files ($WANDB_DIR)
        searched[f"{name} TRAINKITE_HOME files (W&B run files, runs/, cache)"] = n
        leaks.update(found)
    assert list((homes["ok"] / "wandb").rglob("*.wandb")), "W&B offline run files were written"

    for number in (ok_build, bad_build):
        build = fake_buildkite.build(ORG, PIPELINE, number)
        check("Buildkite meta-data", build["meta_data"])
        check("Buildkite annotations", fake_buildkite.annotations(ORG, PIPELINE, number))
    check("Buildkite request bodies", [r["body"] for r in fake_buildkite.requests])

    print("\nsearched for canaries:\n" + "\n".join(f"  {n:>5}  {where}" for where, n in searched.items()))
    assert not leaks, leaks


def test_clients_keep_secrets_out_of_exceptions(tmp_path, aws, monkeypatch):
    """The failure messages a user sees, for the two clients that hold secrets."""
    from buildkite.client import BuildkiteClient, BuildkiteError
    from tests.faults.s3_proxy import S3FaultProxy
    from trainkite.store import S3Store, StoreError

    canaries = _canaries()
    client = BuildkiteClient(
        canaries["BUILDKITE_API_TOKEN"], "http://127.0.0.1:9/v2", ORG, PIPELINE, timeout=1, max_retries=1
    )
    client.sleep = lambda s: None
    with pytest.raises(BuildkiteError) as err:
        client.unblock(1, "training_finished", {"a": "b"})
    chain, exc = [], err.value
    while exc is not None:
        chain += [repr(exc), str(exc)]
        exc = exc.__cause__ or exc.__context__
    assert not _leaks("\n".join(chain) + repr(client), canaries)

    proxy = S3FaultProxy(aws).start()
    try:
        proxy.fail(403, "AccessDenied", times=None)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canaries["AWS_SECRET_ACCESS_KEY"])
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        f = tmp_path / "w"
        f.write_bytes(b"x")
        for call in (lambda s: s.put_file(f, "m/x"), lambda s: s.get_bytes("m/x"), lambda s: s.list("m")):
            with pytest.raises(StoreError) as err:
                call(S3Store("s3://models/x"))
            assert "access denied" in str(err.value)
            assert not _leaks(f"{err.value!r} {err.value.__context__!r}", canaries)
    finally:
        proxy.stop()


# --- only safetensors is ever loaded ------------------------------------------------------------------------

LOAD_PATH = [
    "models/predictor.py",
    "models/fit.py",
    "models/bow.py",
    "models/linear.py",
    "models/features.py",
    "models/encoder.py",
    "models/encoder_train.py",
    "models/lean_predictor.py",
    "models/registry.py",
    "trainkite/snapshot.py",
    "tasks/verify.py",
    "trainkite/manifest.py",
    "trainkite/store.py",
    "serving/app.py",
    "serving/payload.py",
    "serving/entrypoint.py",
    "tasks/package.py",
]


def test_the_load_path_has_no_pickle():
    """No torch.load, pickle, joblib, dill or np.load(allow_pickle=True) in any module that loads a model."""
    bad = []
    for rel in LOAD_PATH:
        path = REPO / rel
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad += [
                    f"{rel}:{node.lineno} imports {n}"
                    for n in names
                    if n.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "cloudpickle")
                ]
            if isinstance(node, ast.Call):
                fn = ast.unparse(node.func)
                if fn in ("torch.load", "pickle.load", "pickle.loads", "torch.serialization.load"):
                    bad.append(f"{rel}:{node.lineno} calls {fn}")
                if fn.endswith("np.load") or fn == "numpy.load":
                    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    if kw.get("allow_pickle") != "False":
                        bad.append(f"{rel}:{node.lineno} np.load without allow_pickle=False")
    assert not bad, bad


def _pickle_bomb(marker: Path) -> bytes:
    """A torch.save file (a pickle) that, if unpickled, creates `marker`."""
    import io
    import pickle

    import torch

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    buf = io.BytesIO()
    torch.save({"embedding.weight": torch.zeros(2), "x": Bomb()}, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return buf.getvalue()


@pytest.mark.parametrize("manifest_too", [False, True], ids=["weights-swapped", "weights-and-manifest-swapped"])
def test_a_pickle_in_place_of_the_weights_is_never_unpickled(trained_model_dir, tmp_path, manifest_too):  # noqa: F811
    from models.predictor import Predictor
    from trainkite.lineage import file_sha256
    from trainkite.store import LocalStore

    folder = copy_model(trained_model_dir, tmp_path / "store", "evil-1")
    marker = tmp_path / "unpickled"
    (folder / "weights.safetensors").write_bytes(_pickle_bomb(marker))
    if manifest_too:  # an attacker who can also rewrite the manifest's hash
        m = json.loads((folder / "manifest.json").read_text())
        m["files"]["weights.safetensors"]["sha256"] = file_sha256(folder / "weights.safetensors")
        (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception) as err:
        Predictor.from_store(LocalStore(tmp_path / "store"), "evil-1")
    if not manifest_too:
        assert isinstance(err.value, IntegrityError) and "does not match its sha256" in str(err.value)
    else:
        assert isinstance(err.value, IntegrityError) and "not a safetensors file" in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "predict", "evil-1", "--text", "x", "--root", str(tmp_path / "store")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not marker.exists(), "the pickle was unpickled"


# --- nothing reaches outside the store ----------------------------------------------------------------------

TRAVERSALS = ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "..", "a/./b"]


@pytest.mark.parametrize("key", TRAVERSALS)
def test_store_keys_cannot_leave_the_root(key, tmp_path):
    from trainkite.store import LocalStore, S3Store

    class NoS3:  # the key must be refused before any request is made
        def __getattr__(self, name):
            return lambda *a, **k: pytest.fail(f"S3 {name} called for key {key!r}")

    root = tmp_path / "root"
    root.mkdir()
    for store in (LocalStore(root), S3Store("s3://models/prefix", client=NoS3())):
        for op in (lambda s: s.put_bytes(b"x", key), lambda s: s.get_bytes(key), lambda s: s.exists(key)):
            with pytest.raises(UserInputError, match="invalid artifact key"):
                op(store)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("model_id", ["../x", "x/../../y", "..", "/abs", "a\\..\\b", "x\x00", ".hidden", "a" * 200])
def test_model_ids_cannot_name_a_path(model_id, tmp_path):
    from models.predictor import Predictor
    from trainkite.store import LocalStore

    with pytest.raises(UserInputError, match="invalid model ID"):
        Predictor.from_store(LocalStore(tmp_path), model_id)
