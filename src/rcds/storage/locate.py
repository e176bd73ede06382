"""Open a store from where it is: a local directory or ``s3://bucket/prefix``."""

from __future__ import annotations

from pathlib import Path

from rcds.storage.base import Store
from rcds.storage.local import LocalStore

S3_SCHEME = "s3://"


def is_s3(location: str | Path) -> bool:
    """True for an ``s3://`` location."""
    return str(location).startswith(S3_SCHEME)


def open_store(location: str | Path, *, create: bool = False, **s3_options: str | None) -> Store:
    """A :class:`LocalStore` for a directory, an :class:`~rcds.storage.s3.S3Store` for ``s3://``.

    ``create`` makes a local store's directories; an S3 bucket must exist already (its existence
    and the credentials are checked here, so a wrong setting fails at once with a clear error).
    ``s3_options``: endpoint, region, profile, acl, public_url (see
    :class:`~rcds.storage.s3client.S3Location`); ignored for a directory.
    """
    if is_s3(location):
        from rcds.storage.s3 import S3Store  # boto3 is imported only when S3 is used
        from rcds.storage.s3client import S3Location

        store = S3Store(S3Location.parse(str(location), **s3_options))
        try:
            store.ensure_bucket()
        except BaseException:
            store.close()
            raise
        return store
    return LocalStore(Path(location), create=create)
