"""The artifact store's two backends, the manifest contract and tamper detection."""

import json

import pytest

from trainkite import manifest as mf
from trainkite.errors import IntegrityError, ModelNotFound, UserInputError
from trainkite.store import LocalStore, S3Store, StoreError, open_store


def _publish(store, tmp_path, model_id="m-1", name="sentiment"):
    a = tmp_path / "weights.safetensors"
    a.write_bytes(b"weights" * 100)
    b = tmp_path / "params.json"
    b.write_text("{}")
    return mf.publish(
        store, mf.ModelRef(name, model_id), {"weights.safetensors": a, "sub/params.json": b}, {"lineage": {"seed": 1}}
    )


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    request.getfixturevalue("aws")
    import boto3

    boto3.client("s3").create_bucket(Bucket="models")
    return open_store("s3://models/team/prefix")


def test_publish_find_fetch_roundtrip(store, tmp_path, tk_home):
    m = _publish(store, tmp_path)
    assert set(m["files"]) == {"weights.safetensors", "sub/params.json"}
    assert mf.find_model(store, "m-1").name == "sentiment"
    folder, manifest = mf.fetch_model(store, "m-1")
    assert (folder / "weights.safetensors").read_bytes() == b"weights" * 100
    assert [x["model_id"] for x in mf.list_models(store)] == ["m-1"]


def test_folder_without_manifest_is_not_a_model(store, tmp_path, tk_home):
    store.put_bytes(b"half", "sentiment/m-2/weights.safetensors")
    assert mf.list_models(store) == []
    with pytest.raises(IntegrityError, match="has no manifest.json"):
        mf.fetch_model(store, "m-2")
    with pytest.raises(ModelNotFound):
        mf.fetch_model(store, "m-3")


def test_republish_same_files_is_idempotent_and_different_files_refused(store, tmp_path, tk_home):
    first = _publish(store, tmp_path)
    assert _publish(store, tmp_path) == first
    (tmp_path / "weights.safetensors").write_bytes(b"other")
    with pytest.raises(Exception, match="already published"):
        mf.publish(
            store, mf.ModelRef("sentiment", "m-1"), {"weights.safetensors": tmp_path / "weights.safetensors"}, {}
        )


def test_tampered_file_is_refused_by_name(tmp_path, tk_home):
    store = LocalStore(tmp_path / "store")
    _publish(store, tmp_path)
    path = store.local_path("sentiment/m-1/weights.safetensors")
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="weights.safetensors does not match its sha256"):
        mf.fetch_model(store, "m-1")


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "x" * 200, "/etc", "a b"])
def test_model_ids_cannot_leave_the_store(tmp_path, bad):
    with pytest.raises(UserInputError, match="invalid model ID"):
        mf.find_model(LocalStore(tmp_path), bad)


def test_keys_cannot_escape(tmp_path):
    with pytest.raises(UserInputError):
        LocalStore(tmp_path).put_bytes(b"x", "../evil")


def test_s3_errors_say_what_to_do(aws, tmp_path):
    store = S3Store("s3://no-such-bucket/x")
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        store.put_bytes(b"x", "a/b")


def test_s3_missing_credentials(aws, monkeypatch, tmp_path):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(StoreError, match="no AWS credentials found"):
        S3Store("s3://bucket/x").put_bytes(b"x", "a/b")


def test_manifest_is_written_last(tmp_path, tk_home):
    """A crash between files and manifest leaves no model: put_bytes of the manifest is the commit."""
    order = []

    class Recording(LocalStore):
        def put_file(self, local, key):
            order.append(key)
            super().put_file(local, key)

        def put_bytes(self, data, key):
            order.append(key)
            super().put_bytes(data, key)

    _publish(Recording(tmp_path / "s"), tmp_path)
    assert order[-1].endswith("manifest.json") and len(order) == 3
    assert json.loads((tmp_path / "s" / "sentiment" / "m-1" / "manifest.json").read_text())["schema"]


def test_s3_scratch_files_carry_the_lifecycle_tag(aws, tmp_path):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="models")
    store = open_store("s3://models/models")
    f = tmp_path / "x"
    f.write_bytes(b"x")
    store.put_file(f, "sentiment/m-1/checkpoints/last.safetensors")
    store.put_bytes(b"{}", "sentiment/m-1/run/metrics.json")
    store.put_file(f, "sentiment/m-1/weights.safetensors")

    def tags(key):
        return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket="models", Key=f"models/{key}")["TagSet"]}

    assert tags("sentiment/m-1/checkpoints/last.safetensors") == {"trainkite-artifact": "checkpoint"}
    assert tags("sentiment/m-1/run/metrics.json") == {"trainkite-artifact": "checkpoint"}
    assert tags("sentiment/m-1/weights.safetensors") == {}
