"""Credentials for the publishing API: bearer token, client certificate (or proxy), trusted CAs.

Found the way jobsub finds them (rcds-today.md 3.1, 3.4): explicit options first, then
``$BEARER_TOKEN`` / ``$BEARER_TOKEN_FILE`` and ``$X509_USER_PROXY``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rcds.errors import ConfigError

__all__ = ["Credentials"]


@dataclass(frozen=True)
class Credentials:
    """How to authenticate (``token``, ``cert_file``/``key_file``) and verify servers (``ca_*``).

    Without ``ca_file``/``ca_dir`` the system's default CAs are trusted.
    """

    token: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    ca_dir: Path | None = None

    @classmethod
    def discover(
        cls,
        *,
        token_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        ca_file: Path | None = None,
        ca_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Credentials:
        """Credentials from explicit options, else the environment as jobsub uses it.

        Token: ``token_file``, else ``$BEARER_TOKEN`` (the token itself), else
        ``$BEARER_TOKEN_FILE``. Certificate: ``cert_file`` (with ``key_file``, or the key in
        the same file), else ``$X509_USER_PROXY`` (a proxy file with certificate, key and
        chain). ``$X509_CERT_DIR`` is the default for ``ca_dir``.
        """
        env = os.environ if environ is None else environ
        token: str | None = None
        if token_file is not None:
            token = _read_token(token_file)
        elif env.get("BEARER_TOKEN", "").strip():
            token = env["BEARER_TOKEN"].strip()
        elif env.get("BEARER_TOKEN_FILE", "").strip():
            token = _read_token(Path(env["BEARER_TOKEN_FILE"].strip()))
        if cert_file is None and env.get("X509_USER_PROXY", "").strip():
            cert_file = Path(env["X509_USER_PROXY"].strip())
        if key_file is not None and cert_file is None:
            raise ConfigError("a client key was given without a certificate; add --cert FILE")
        for what, path in (("certificate", cert_file), ("key", key_file), ("CA file", ca_file)):
            if path is not None and not path.is_file():
                raise ConfigError(f"{what} {path} does not exist or is not a file")
        if ca_dir is None and env.get("X509_CERT_DIR", "").strip():
            ca_dir = Path(env["X509_CERT_DIR"].strip())
        if ca_dir is not None and not ca_dir.is_dir():
            raise ConfigError(f"CA directory {ca_dir} does not exist")
        return cls(token, cert_file, key_file, ca_file, ca_dir)


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path} ({exc.strerror or exc})") from None
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"token file {path} does not hold one bearer token")
    return token
