"""The one artifact-store interface: a local folder or S3, chosen by the root URI.

Keys are POSIX paths relative to the root (`sentiment/local-.../weights.safetensors`).
Writes of single objects are atomic on both backends (temp file + rename locally, one PUT
on S3), which is what lets `manifest.json`, written last, act as the commit marker.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from trainkite.errors import TrainkiteError, UserInputError
from trainkite.home import default_artifact_root


class StoreError(TrainkiteError):
    pass


_DISK_ADVICE = {
    errno.ENOSPC: "the disk is full: free space and re-run (a training resumes from its last checkpoint)",
    errno.EDQUOT: "the disk quota is used up: free space and re-run",
    errno.EFBIG: "the file is larger than this system allows (ulimit -f)",
    errno.EROFS: "the file system is read-only: use a writable artifacts.root / TRAINKITE_HOME",
    errno.EACCES: "permission denied: use a writable artifacts.root / TRAINKITE_HOME",
    errno.EPERM: "permission denied: use a writable artifacts.root / TRAINKITE_HOME",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def disk_error(what: str, err: OSError) -> StoreError:
    """A local read or write that failed (full disk, read-only store, ...), as one line saying what to do."""
    advice = _DISK_ADVICE.get(err.errno, "")
    where = f" ({err.filename})" if err.filename else ""
    return StoreError(f"{what}: {err.strerror or err}{where}{'; ' + advice if advice else ''}")


@contextlib.contextmanager
def local_write(what: str) -> Iterator[None]:
    """Turn an OSError from writing local files (a store, a run's scratch folder) into a StoreError that says
    what to do; whatever wrote a temp file removes it itself, so nothing half-written is left."""
    try:
        yield
    except StoreError:
        raise
    except OSError as err:
        raise disk_error(what, err) from None
    except Exception as err:
        # safetensors reports a failed write (ENOSPC, EFBIG) as its own error type, with the OS message in it.
        if type(err).__name__ == "SafetensorError":
            raise StoreError(f"{what}: {err}") from None
        raise


def _check_key(key: str) -> str:
    parts = key.split("/")
    if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UserInputError(f"invalid artifact key {key!r}")
    return key


class ArtifactStore(ABC):
    root: str

    @abstractmethod
    def put_file(self, local: Path, key: str) -> None: ...

    @abstractmethod
    def put_bytes(self, data: bytes, key: str) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def download(self, key: str, local: Path) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix/` (recursive), relative to the root."""

    @abstractmethod
    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-folders of `prefix`."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    # An atomic create-only write, so two runs publishing the same model ID
    # can decide which one owns the folder (see trainkite.manifest.publish) instead of mixing files.
    def put_bytes_if_absent(self, data: bytes, key: str) -> bool:
        """Write `key` only if nothing is there yet, atomically; False (nothing written) if it exists."""
        raise NotImplementedError(f"{type(self).__name__} has no create-only write")

    def uri(self, key: str = "") -> str:
        return f"{self.root.rstrip('/')}/{key}" if key else self.root

    def local_path(self, key: str) -> Path | None:
        """A path on this machine for `key`, when the store is a local folder."""
        return None


class LocalStore(ArtifactStore):
    def __init__(self, root: str | Path):
        self.base = Path(root).expanduser().resolve()
        self.root = str(self.base)
        if self.base.exists() and not self.base.is_dir():
            raise UserInputError(
                f"artifact root {self.root!r} is a file, not a folder; set artifacts.root (or "
                "TRAINKITE_ARTIFACTS) to a folder"
            )

    def _path(self, key: str) -> Path:
        return self.base / _check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def put_file(self, local: Path, key: str) -> None:
        dest = self._path(key)
        with local_write(f"write {self.uri(key)}"):
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            os.close(fd)
            try:
                shutil.copyfile(local, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def _written_temp(self, data: bytes, dest: Path) -> Path:
        """`data` fsynced into a temp file beside `dest`, ready to be renamed or linked into place."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    def put_bytes(self, data: bytes, key: str) -> None:
        dest = self._path(key)
        with local_write(f"write {self.uri(key)}"):
            tmp = self._written_temp(data, dest)
            try:
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.uri(key)} does not exist") from None

    def download(self, key: str, local: Path) -> None:
        with local_write(f"copy {self.uri(key)} to {local}"):
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(self._path(key), local)
            except FileNotFoundError:
                raise StoreError(f"{self.uri(key)} does not exist") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.base
        if not base.is_dir():
            return []
        out = []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.endswith(".part"):
                out.append(p.relative_to(self.base).as_posix())
        return sorted(out)

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix) if prefix else self.base
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def put_bytes_if_absent(self, data: bytes, key: str) -> bool:
        dest = self._path(key)
        with local_write(f"write {self.uri(key)}"):
            tmp = self._written_temp(data, dest)
            try:
                os.link(tmp, dest)  # atomic and create-only: the complete file appears, or nothing
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)
        return True


# Checkpoints and a run's staged files are scratch: the bucket's lifecycle rule expires objects with
# this tag (S3 lifecycle filters cannot match `*/checkpoints/` in the middle of a key).
SCRATCH_TAG = "trainkite-artifact=checkpoint"


def _is_scratch(key: str) -> bool:
    parts = key.split("/")
    return (
        "checkpoints" in parts[:-1] or "run" in parts[2:3] or key.startswith("_cache/") or key.startswith("_scratch/")
    )


class S3Store(ArtifactStore):
    """S3 through boto3; `AWS_ENDPOINT_URL` (moto, MinIO) is honoured by boto3 itself."""

    def __init__(self, uri: str, client=None):
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise UserInputError(f"artifact root {uri!r} must look like s3://bucket/prefix")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.root = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self._client = client

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # "standard" retries cover 500/503/SlowDown with backoff; a publish either lands whole or the
            # manifest (written last) is never written.
            # A fresh session: the module-level default one caches credentials across env changes.
            self._client = boto3.session.Session().client(
                "s3",
                config=Config(retries={"mode": "standard", "max_attempts": 8}, connect_timeout=10, read_timeout=60),
            )
        return self._client

    def _key(self, key: str) -> str:
        _check_key(key) if key else None
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, *args, **kwargs):
        from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(*args, **kwargs)
        except NoCredentialsError:
            raise StoreError(
                f"{what}: no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "(or use a local artifacts.root)"
            ) from None
        except ClientError as err:
            raise self._client_error(what, err) from None
        except (S3UploadFailedError, S3TransferFailedError) as err:
            # upload_file wraps the ClientError (retries exhausted, AccessDenied, ...)
            # in boto3's S3UploadFailedError, which used to escape as a raw traceback with no advice.
            cause = err.__context__
            if isinstance(cause, ClientError):
                raise self._client_error(what, cause) from None
            raise StoreError(f"{what}: {err}") from None
        except BotoCoreError as err:
            raise StoreError(f"{what}: {err}") from None

    def _client_error(self, what: str, err) -> StoreError:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket",):
            return StoreError(f"{what}: bucket {self.bucket!r} does not exist; create it or fix artifacts.root")
        if code in ("AccessDenied", "403", "AllAccessDisabled"):
            return StoreError(
                f"{what}: access denied to s3://{self.bucket}; the role needs s3:GetObject/PutObject/ListBucket "
                "on this prefix"
            )
        if code in ("NoSuchKey", "404"):
            return StoreError(f"{what}: does not exist")
        return StoreError(f"{what}: {code or err}")

    def put_file(self, local: Path, key: str) -> None:
        extra = {"Tagging": SCRATCH_TAG} if _is_scratch(key) else None
        self._call(
            f"upload {self.uri(key)}", self.client.upload_file, str(local), self.bucket, self._key(key), ExtraArgs=extra
        )

    def put_bytes(self, data: bytes, key: str) -> None:
        extra = {"Tagging": SCRATCH_TAG} if _is_scratch(key) else {}
        self._call(
            f"put {self.uri(key)}", self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data, **extra
        )

    def put_bytes_if_absent(self, data: bytes, key: str) -> bool:
        from botocore.exceptions import ClientError

        def put() -> bool:
            try:
                # S3 conditional write (If-None-Match: *): 412 when the key exists, 409 while another
                # conditional write of it is in flight; either way another writer owns the key.
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
                return True
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise

        return self._call(f"put {self.uri(key)}", put)

    def get_bytes(self, key: str) -> bytes:
        resp = self._call(f"get {self.uri(key)}", self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return resp["Body"].read()

    def download(self, key: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".part")
        self._call(f"download {self.uri(key)}", self.client.download_file, self.bucket, self._key(key), str(tmp))
        os.replace(tmp, local)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            return bool(
                self._call(f"head {self.uri(key)}", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            )

    def _paginate(self, **kwargs):
        paginator = self.client.get_paginator("list_objects_v2")
        return self._call(f"list {self.root}", lambda: list(paginator.paginate(Bucket=self.bucket, **kwargs)))

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = [o["Key"][strip:] for page in self._paginate(Prefix=full) for o in page.get("Contents", [])]
        return sorted(keys)

    def list_dirs(self, prefix: str = "") -> list[str]:
        full = self._key(prefix).rstrip("/") + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        out = []
        for page in self._paginate(Prefix=full, Delimiter="/"):
            for cp in page.get("CommonPrefixes", []):
                out.append(cp["Prefix"][len(full) :].rstrip("/"))
        return sorted(out)

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            self._call(
                f"delete {self.uri(prefix)}", self.client.delete_objects, Bucket=self.bucket, Delete={"Objects": batch}
            )


def open_store(root: str | None = None) -> ArtifactStore:
    root = root or os.environ.get("TRAINKITE_ARTIFACTS") or default_artifact_root()
    if root.startswith("s3://"):
        return S3Store(root)
    if "://" in root:
        raise UserInputError(f"artifact root {root!r}: use a folder path or s3://bucket/prefix")
    return LocalStore(root)
