"""The CA certificates trusted for client certificates, and certificate loading."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rcds.errors import AuthError, ConfigError

__all__ = ["TrustStore", "load_certificates"]

log = logging.getLogger(__name__)

_CA_FILE_RE = re.compile(r"\.(pem|crt|\d+)$")


def load_certificates(items: Iterable[x509.Certificate | bytes]) -> list[x509.Certificate]:
    """Turn certificates given as objects, DER or PEM bytes into objects (order kept).

    PEM bytes may hold several certificates.  Raises :class:`AuthError` (401) for anything
    that does not parse.
    """
    certs: list[x509.Certificate] = []
    for item in items:
        if isinstance(item, x509.Certificate):
            certs.append(item)
            continue
        try:
            if item.lstrip().startswith(b"-----BEGIN"):
                certs.extend(x509.load_pem_x509_certificates(item))
            else:
                certs.append(x509.load_der_x509_certificate(item))
        except ValueError as e:
            raise AuthError(f"client certificate rejected: unparsable certificate: {e}", status=401) from None
    return certs


class TrustStore:
    """The CA certificates trusted to issue client certificates."""

    def __init__(self, certificates: Iterable[x509.Certificate]) -> None:
        self._certs: list[x509.Certificate] = []
        self._by_subject: dict[x509.Name, list[x509.Certificate]] = {}
        seen: set[bytes] = set()
        for cert in certificates:
            der = cert.public_bytes(serialization.Encoding.DER)
            if der in seen:
                continue
            seen.add(der)
            self._certs.append(cert)
            self._by_subject.setdefault(cert.subject, []).append(cert)

    @classmethod
    def from_directory(cls, directory: str | Path) -> TrustStore:
        """Load every ``*.pem``, ``*.crt`` and ``*.<digits>`` file (e.g. ``1a2b3c4d.0``) of a
        directory such as ``/etc/grid-security/certificates``.

        Other files (``.signing_policy``, ``.namespaces``, ``.r0`` CRLs, ...) are ignored;
        unparsable certificate files are logged and skipped.  Raises :class:`ConfigError` if
        the directory cannot be read or holds no certificate.
        """
        d = Path(directory)
        try:
            names = sorted(p for p in d.iterdir() if _CA_FILE_RE.search(p.name) and p.is_file())
        except OSError as e:
            raise ConfigError(f"{d}: cannot read CA directory: {e.strerror or e}") from e
        certs: list[x509.Certificate] = []
        for p in names:
            try:
                certs.extend(x509.load_pem_x509_certificates(p.read_bytes()))
            except (OSError, ValueError) as e:
                log.warning("skipping CA file %s: %s", p, e)
        if not certs:
            raise ConfigError(f"{d}: no CA certificates (*.pem, *.crt, *.0) found")
        return cls(certs)

    @classmethod
    def from_pem_file(cls, path: str | Path) -> TrustStore:
        """Load all certificates of a PEM bundle; raises :class:`ConfigError` on failure."""
        try:
            certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path}: cannot load CA certificates: {e}") from e
        return cls(certs)

    @classmethod
    def load(cls, ca_dir: str | Path | None = None, ca_file: str | Path | None = None) -> TrustStore:
        """Combine a CA directory and a CA bundle (either may be omitted, not both)."""
        if ca_dir is None and ca_file is None:
            raise ConfigError("no CA directory or CA file given for client certificates")
        certs: list[x509.Certificate] = []
        if ca_dir is not None:
            certs += cls.from_directory(ca_dir).certificates
        if ca_file is not None:
            certs += cls.from_pem_file(ca_file).certificates
        return cls(certs)

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """All trusted certificates."""
        return tuple(self._certs)

    def pem(self) -> str:
        """All trusted certificates as one PEM string (for ``SSLContext.load_verify_locations``)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self._certs).decode("ascii")

    def by_subject(self, name: x509.Name) -> list[x509.Certificate]:
        """The trusted certificates whose subject is ``name``."""
        return list(self._by_subject.get(name, ()))

    def __len__(self) -> int:
        return len(self._certs)
