"""The one exception tree of rcds.

Every error rcds raises on purpose derives from :class:`RcdsError`, and its message says
what went wrong *and* what the user can do about it.
"""

from __future__ import annotations


class RcdsError(Exception):
    """Root of every deliberate rcds error."""


class ConfigError(RcdsError):
    """A setting, argument or configuration file is wrong."""


class InputError(RcdsError):
    """Input given to rcds (a tarball, a directory, a path, a CID) is unacceptable.

    ``member`` names the offending tar member or path when there is one.
    """

    def __init__(self, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.member = member


class IntegrityError(RcdsError):
    """Data failed verification: a bad hash, signature, size, expiry or structure.

    ``what`` names the broken thing (a path, an object, a file).
    """

    def __init__(self, message: str, what: str | None = None) -> None:
        super().__init__(message)
        self.what = what


class NotFoundError(RcdsError):
    """Something asked for does not exist (a repository, an object, a path)."""


class LockedError(RcdsError):
    """Another writer holds the repository lock."""


class StorageError(RcdsError):
    """The storage backend failed (disk full, permissions, I/O error)."""


class NetworkError(RcdsError):
    """Every host and proxy failed for a request."""


class AuthError(RcdsError):
    """Authentication or authorisation failed.

    ``status`` is the HTTP status the failure maps to: 401 when credentials are missing or
    invalid (the client should present others), 403 when the client is authenticated but not
    allowed to do what it asked.
    """

    def __init__(self, message: str, status: int) -> None:
        if status not in (401, 403):
            raise ValueError(f"AuthError status must be 401 or 403, not {status!r}")
        super().__init__(message)
        self.status = status


class FuseReplyError(RcdsError):
    """A FUSE request answered with an error number (``errno``: ENOENT, EROFS, EIO, ...)."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or f"FUSE request failed with errno {errno}")
        self.errno = errno
