"""Where an S3 store is and how to reach it: ``s3://bucket/prefix``, endpoint, region, credentials.

Credentials are never part of a location: boto3 finds them the usual AWS way (the
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` environment variables, ``AWS_PROFILE`` or a
named profile in ``~/.aws/credentials``, an instance role). The endpoint comes from the location,
else ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (boto3 reads those itself), else AWS.
Nothing here logs or formats a secret: errors carry the bucket, the key and the endpoint only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from rcds.errors import ConfigError, NotFoundError, StorageError

_sessions: dict[tuple[str | None, str], Any] = {}
_clients: dict[tuple[str | None, str | None, str | None, int, str], Any] = {}
_sessions_lock = threading.Lock()
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
RETRY_ATTEMPTS = 6
"""Attempts per request (botocore's standard mode: exponential backoff with jitter on 5xx,
throttling (503 SlowDown, 429) and connection errors), unless ``RCDS_S3_ATTEMPTS`` says otherwise."""
ENV_ATTEMPTS = "RCDS_S3_ATTEMPTS"


def attempts() -> int:
    """Attempts per request: ``RCDS_S3_ATTEMPTS`` or :data:`RETRY_ATTEMPTS`."""
    raw = os.environ.get(ENV_ATTEMPTS, "")
    try:
        n = int(raw) if raw else RETRY_ATTEMPTS
    except ValueError:
        raise ConfigError(f"{ENV_ATTEMPTS}={raw!r} is not a number of attempts (1-20)") from None
    if not 1 <= n <= 20:
        raise ConfigError(f"{ENV_ATTEMPTS}={raw!r} is not a number of attempts (1-20)")
    return n


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
    ENV_ATTEMPTS,
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
        client = _new_client(loc, pool, env)
        with _sessions_lock:
            client = _clients.setdefault(key, client)
    return client


def _new_client(loc: S3Location, pool: int, env: str) -> Any:
    import boto3  # imported here: only S3 users pay for it
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": attempts(), "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=pool,
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    with _sessions_lock:  # a session is not thread safe; reusing one spares loading the models again
        session = _sessions.get((loc.profile, env))
        if session is None:
            try:
                session = _sessions[(loc.profile, env)] = boto3.session.Session(profile_name=loc.profile)
            except Exception as exc:  # ProfileNotFound and friends
                raise ConfigError(f"cannot use the AWS profile {loc.profile!r}: {exc}") from None
        region = loc.region or session.region_name or "us-east-1"
        client = session.client("s3", endpoint_url=loc.endpoint, region_name=region, config=config)
        creds = session.get_credentials()
    _REDACTOR.install(creds.get_frozen_credentials() if creds is not None else None)
    return client


class _Redactor(logging.Filter):
    """Takes credentials out of the log records of botocore, boto3, s3transfer and urllib3.

    At debug level botocore logs every request's headers, whose ``Authorization`` names the access
    key id; this filter, installed on those libraries' loggers, rewrites such records (and any
    record that holds a known key id, secret or session token) before a handler sees them.
    """

    NAMESPACES = ("botocore", "boto3", "s3transfer", "urllib3")
    CREDENTIAL = re.compile(r"Credential=[^/,\s'\"]+")

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def install(self, frozen: Any) -> None:
        """Remember these credentials and filter every logger of the namespaces that exists."""
        if frozen is not None:
            self.secrets.update(s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s)
        names = [n for n in list(logging.Logger.manager.loggerDict) if n.split(".")[0] in self.NAMESPACES]
        for name in [*self.NAMESPACES, *names]:
            logger = logging.getLogger(name)
            if self not in logger.filters:
                logger.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite a record that shows a credential."""
        text = record.getMessage()
        clean = self.CREDENTIAL.sub("Credential=<redacted>", text)
        for secret in self.secrets:
            clean = clean.replace(secret, "<redacted>")
        if clean != text:
            record.msg, record.args = clean, None
        return True


_REDACTOR = _Redactor()


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
            f" after {attempts()} attempts; check the object store and try again"
        )
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(
            f"cannot {action} in {where}: {type(exc).__name__} after {attempts()} attempts"
            f" ({_safe(exc)}); check that the object store is up and reachable, then try again"
        )
    return StorageError(f"cannot {action} in {where}: {type(exc).__name__}: {_safe(exc)}")


def _safe(exc: BaseException) -> str:
    """An exception's text, first line only (botocore messages hold URLs, never secrets)."""
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
