"""Where an S3 store is and how to reach it: ``s3://bucket/prefix``, endpoint, region, credentials.

Credentials are never part of a location: boto3 finds them the usual AWS way (the
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` environment variables, ``AWS_PROFILE`` or a
named profile in ``~/.aws/credentials``, an instance role). The endpoint comes from the location,
else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (boto3 reads those itself), else AWS.
Nothing here logs or formats a secret: errors carry the bucket, the key and the endpoint only.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rcds.errors import ConfigError, NotFoundError, StorageError

_sessions: dict[str | None, Any] = {}
_clients: dict[tuple[str | None, str | None, str | None, int, str], Any] = {}
_sessions_lock = threading.Lock()
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
RETRY_ATTEMPTS = 6
"""Attempts per request (botocore's standard mode: exponential backoff with jitter on 5xx,
throttling (503 SlowDown, 429) and connection errors)."""


@dataclass(frozen=True)
class S3Location:
    """A bucket and key prefix, and how to reach them (no credentials: see the module docstring).

    ``acl`` is a canned ACL given with every upload (``public-read`` on AWS, where a bucket policy
    is not used to let readers in); ``public_url`` is where readers fetch the repository over
    HTTP, for messages (default: ``endpoint/bucket/prefix``).
    """

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    profile: str | None = None
    acl: str | None = None
    public_url: str | None = None

    @classmethod
    def parse(cls, url: str, **options: str | None) -> S3Location:
        """``s3://bucket/prefix`` plus options (endpoint, region, profile, acl, public_url)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ConfigError(f"{url!r} is not an S3 location: write s3://BUCKET/PREFIX")
        if parts.username or parts.password or "@" in parts.netloc:
            raise ConfigError(
                "do not put credentials in the S3 location; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead"
            )
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ConfigError(f"{bucket!r} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)")
        prefix = parts.path.strip("/")
        if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
            raise ConfigError(f"the S3 prefix {prefix!r} has an empty, '.' or '..' component")
        endpoint = options.get("endpoint") or None
        if endpoint is not None and urlsplit(endpoint).scheme not in ("http", "https"):
            raise ConfigError(f"the S3 endpoint {endpoint!r} must be an http:// or https:// URL")
        return cls(
            bucket,
            prefix,
            endpoint,
            options.get("region") or None,
            options.get("profile") or None,
            options.get("acl") or None,
            options.get("public_url") or None,
        )

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` (what the user wrote, without options)."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, name: str) -> str:
        """The object key of a store name."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def describe(self) -> str:
        """The location and endpoint, for messages."""
        return f"{self.url} at {self.endpoint or 'the default AWS endpoint'}"


_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
)


def make_client(loc: S3Location, pool: int) -> Any:
    """A thread-safe boto3 S3 client with retries, timeouts and ``pool`` connections.

    Clients are shared by the stores of a process with the same settings (making one loads
    botocore's models, a fraction of a second): keyed by the location's options and a digest of
    the AWS environment, so changed credentials get a new client. Callers must not close it.
    """
    env = hashlib.sha256(repr([os.environ.get(k) for k in _ENV_KEYS]).encode()).hexdigest()
    key = (loc.profile, loc.endpoint, loc.region, pool, env)
    with _sessions_lock:
        client = _clients.get(key)
    if client is None:
        client = _new_client(loc, pool)
        with _sessions_lock:
            client = _clients.setdefault(key, client)
    return client


def _new_client(loc: S3Location, pool: int) -> Any:
    import boto3  # imported here: only S3 users pay for it
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": RETRY_ATTEMPTS, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=pool,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    try:
        session = boto3.session.Session(profile_name=loc.profile)
    except Exception as exc:  # ProfileNotFound and friends
        raise ConfigError(f"cannot use the AWS profile {loc.profile!r}: {exc}") from None
    return session.client(
        "s3", endpoint_url=loc.endpoint, region_name=loc.region or "us-east-1", config=config
    )


def translate(exc: BaseException, loc: S3Location, action: str) -> Exception:
    """An rcds error for a botocore failure while ``action`` (e.g. "write data/ab/...")."""
    from botocore import exceptions as bx

    where = loc.describe()
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ConfigError(
            f"cannot {action} in {where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or give the repository an s3 profile"
        )
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "?"))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFoundError(f"cannot {action}: it is not in {where}")
        if code == "NoSuchBucket":
            return ConfigError(
                f"cannot {action}: the bucket {loc.bucket!r} does not exist at {where}; create it"
            )
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
            return ConfigError(
                f"cannot {action} in {where}: access denied ({code}); check the S3 credentials "
                "and that they may read and write the bucket"
            )
        return StorageError(
            f"cannot {action} in {where}: the object store answered {status} {code}"
            f" after {RETRY_ATTEMPTS} attempts; check the object store and try again"
        )
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(
            f"cannot {action} in {where}: {type(exc).__name__} after {RETRY_ATTEMPTS} attempts"
            f" ({_safe(exc)}); check that the object store is up and reachable, then try again"
        )
    return StorageError(f"cannot {action} in {where}: {type(exc).__name__}: {_safe(exc)}")


def _safe(exc: BaseException) -> str:
    """An exception's text, first line only (botocore messages hold URLs, never secrets)."""
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
