"""A store in an S3 bucket (AWS, Ceph RGW, MinIO, SeaweedFS...), laid out like a served stratum.

Keys are ``PREFIX/.cvmfspublished``, ``PREFIX/data/xx/<hash>``...: exactly the paths a web server
serves from a local stratum directory, so readers (rcds, stock ``cvmfs2``) use the bucket's HTTP
endpoint as ``CVMFS_SERVER_URL=http://ENDPOINT/BUCKET/PREFIX`` when its objects are public-read.

A PUT is atomic in S3 (a reader sees the old object or the new one), so objects are written
directly, without temp names. Objects larger than ``multipart_threshold`` go up in parts
(multipart upload, completed atomically); an interrupted multipart upload is invisible to
readers and is aborted by :meth:`S3Store.clean_temp` (run by every writer and by ``gc``).
Each call is synchronous: parallelism comes from the callers' threads (the client pool holds
``parallelism`` connections), memory is bounded by what the callers hold. Retries with
exponential backoff on 5xx, throttling and connection errors are botocore's standard mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from rcds.errors import NotFoundError, StorageError
from rcds.storage.base import Store
from rcds.storage.names import check_name, is_object_name
from rcds.storage.s3client import S3Location, make_client, translate

PART_SIZE = 8 << 20
"""Bytes per part of a multipart upload (S3 wants at least 5 MiB for all parts but the last)."""
MULTIPART_THRESHOLD = 16 << 20
"""Objects of at least this size are uploaded in parts."""
SPOOL_BYTES = 8 << 20
"""``open`` keeps objects up to this size in memory, larger ones in a temporary file."""
ROOT_CACHE = "max-age=61"
OBJECT_CACHE = "public, max-age=259200"
"""Cache-Control of root files (short: they change) and objects (content addressed: never change),
as a stock stratum's Apache configuration sets them."""


class S3Store(Store):
    """Objects and root files under one key prefix of a bucket."""

    def __init__(
        self,
        loc: S3Location,
        *,
        parallelism: int = 16,
        part_size: int = PART_SIZE,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        client: Any = None,
    ) -> None:
        self.loc = loc
        self.location = loc.url
        self.parallelism = parallelism
        self.part_size = part_size
        self.multipart_threshold = max(multipart_threshold, part_size)
        self._client = client if client is not None else make_client(loc, parallelism + 4)
        if loc.endpoint is None:  # from AWS_ENDPOINT_URL or the AWS default: named in messages
            self.loc = dataclasses.replace(loc, endpoint=str(self._client.meta.endpoint_url))
        self._staging: Path | None = None

    # -- helpers -----------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return self.loc.key(check_name(name))

    def _extra(self, name: str) -> dict[str, str]:
        extra = {"CacheControl": OBJECT_CACHE if is_object_name(name) else ROOT_CACHE}
        if self.loc.acl:
            extra["ACL"] = self.loc.acl
        return extra

    def _head(self, name: str) -> dict[str, Any] | None:
        """The object's metadata, or None if absent. An empty data object counts as absent: a
        stored object is never empty (a zlib stream has at least 8 bytes), but an upload cut off by
        a crash can leave an empty entry behind in some object stores (seen with SeaweedFS), and
        taking it for the content would let a later publish reference it."""
        key = self._key(name)
        try:
            head = dict(self._client.head_object(Bucket=self.loc.bucket, Key=key))
        except Exception as exc:
            err = translate(exc, self.loc, f"look up {name}")
            if isinstance(err, NotFoundError):
                return None
            raise err from None
        if is_object_name(name) and int(head.get("ContentLength", 1)) == 0:
            return None
        return head

    # -- writing -----------------------------------------------------------------------------
    def put(self, name: str, data: bytes | memoryview) -> None:
        """One PUT (atomic), or a multipart upload for large data."""
        key = self._key(name)
        view = memoryview(data)
        if len(view) >= self.multipart_threshold:
            self._multipart(name, key, view.nbytes, lambda off, n: view[off : off + n].tobytes())
            return
        try:
            self._client.put_object(Bucket=self.loc.bucket, Key=key, Body=view.tobytes(), **self._extra(name))
        except Exception as exc:
            raise translate(exc, self.loc, f"write {name}") from None

    def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        """HEAD, then PUT if absent: a re-published content costs one round trip, no upload.

        An object that is there is never written again, not even with the same bytes: an upload
        cut off by a crash may leave an empty object behind (SeaweedFS does), which would then
        replace a good object that a committed revision references.
        """
        if self._head(name) is not None:
            return False
        self.put(name, data)
        return True

    def put_file(self, name: str, src: Path) -> None:
        """Upload a complete local file (in parts if large), then remove it."""
        key = self._key(name)
        size = src.stat().st_size
        with open(src, "rb") as f:
            if size >= self.multipart_threshold:

                def read(off: int, n: int) -> bytes:
                    f.seek(off)
                    return f.read(n)

                self._multipart(name, key, size, read)
            else:
                self.put(name, f.read())
        src.unlink()

    def _multipart(self, name: str, key: str, size: int, read: Any) -> None:
        """Upload ``size`` bytes (``read(offset, n)``) in parts; abort the upload on any failure."""
        c, bucket = self._client, self.loc.bucket
        try:
            upload = c.create_multipart_upload(Bucket=bucket, Key=key, **self._extra(name))["UploadId"]
        except Exception as exc:
            raise translate(exc, self.loc, f"start the upload of {name}") from None
        try:
            parts = []
            for number, off in enumerate(range(0, size, self.part_size), start=1):
                body = read(off, min(self.part_size, size - off))
                r = c.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)
                parts.append({"PartNumber": number, "ETag": r["ETag"]})
            c.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
            )
        except Exception as exc:
            err = translate(exc, self.loc, f"upload {name} in parts")
            with contextlib.suppress(Exception):  # failing anyway; clean_temp aborts it later
                c.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            raise err from None

    def staging_dir(self) -> Path:
        """A private local temp directory (removed by :meth:`close`)."""
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="rcds-s3-"))
        return self._staging

    # -- reading -----------------------------------------------------------------------------
    def get(self, name: str) -> bytes:
        """The whole object."""
        key = self._key(name)
        try:
            r = self._client.get_object(Bucket=self.loc.bucket, Key=key)
            return bytes(r["Body"].read())
        except Exception as exc:
            raise translate(exc, self.loc, f"read {name}") from None

    def open(self, name: str) -> BinaryIO:
        """A reader of a snapshot of the object (memory up to 8 MiB, then a temp file)."""
        key = self._key(name)
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - returned
        try:
            r = self._client.get_object(Bucket=self.loc.bucket, Key=key)
            for block in iter(lambda: r["Body"].read(1 << 20), b""):
                spool.write(block)
        except Exception as exc:
            spool.close()
            raise translate(exc, self.loc, f"read {name}") from None
        spool.seek(0)
        return spool  # type: ignore[return-value]

    def has(self, name: str) -> bool:
        """HEAD the object."""
        return self._head(name) is not None

    def size(self, name: str) -> int:
        """Content-Length of a HEAD."""
        head = self._head(name)
        if head is None:
            raise NotFoundError(f"{name} is not in the store {self.location}")
        return int(head["ContentLength"])

    def delete(self, name: str) -> bool:
        """HEAD, then DELETE (S3 deletes are idempotent and do not say whether the key existed)."""
        if self._head(name) is None:
            return False
        try:
            self._client.delete_object(Bucket=self.loc.bucket, Key=self.loc.key(name))
        except Exception as exc:
            raise translate(exc, self.loc, f"delete {name}") from None
        return True

    def list_objects(self) -> Iterator[str]:
        """List ``PREFIX/data/``; keys that are not object names are ignored."""
        start = len(self.loc.key(""))
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.loc.bucket, Prefix=self.loc.key("data/")
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    name = str(item["Key"])[start:]
                    if is_object_name(name):
                        yield name
        except Exception as exc:
            raise translate(exc, self.loc, "list the objects") from None

    # -- housekeeping -------------------------------------------------------------------------
    def clean_temp(self) -> int:
        """Abort unfinished multipart uploads under the prefix (left by a crashed writer)."""
        n = 0
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.loc.bucket, Prefix=self.loc.key("")
            )
            for page in pages:
                for up in page.get("Uploads", ()):
                    self._client.abort_multipart_upload(
                        Bucket=self.loc.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    n += 1
        except Exception as exc:
            raise translate(exc, self.loc, "clean up unfinished uploads") from None
        return n

    def ensure_bucket(self) -> None:
        """Check that the bucket exists and can be reached (a clear error otherwise)."""
        try:
            self._client.head_bucket(Bucket=self.loc.bucket)
        except Exception as exc:
            err = translate(exc, self.loc, "open the bucket")
            if isinstance(err, NotFoundError):
                raise StorageError(
                    f"the bucket {self.loc.bucket!r} does not exist at {self.loc.describe()}; create it first"
                ) from None
            raise err from None

    def close(self) -> None:
        """Remove the staging directory (the client and its connections are shared: kept)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
