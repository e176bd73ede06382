"""The manifest ``.cvmfspublished``: key letters, exact serialization, signature."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from rcds.errors import IntegrityError
from rcds.format import signed
from rcds.format.hashes import ContentHash

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

ROOT_PATH_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
DEFAULT_TTL = 240


class Manifest(NamedTuple):
    """The fields of a manifest (key letters in comments)."""

    root_catalog: ContentHash  # C
    root_catalog_size: int  # B (uncompressed)
    ttl: int  # D
    revision: int  # S
    repository_name: str  # N
    certificate: ContentHash  # X
    timestamp: int  # T
    garbage_collectable: bool = True  # G
    alternative_paths: bool = False  # A
    history: ContentHash | None = None  # H
    metainfo: ContentHash | None = None  # M
    reflog: ContentHash | None = None  # Y
    root_path_md5: str = ROOT_PATH_MD5  # R

    def body(self) -> bytes:
        """The exact text stock writes (``Manifest::ExportString``), before the ``--`` line."""
        lines = [
            f"C{self.root_catalog.hex}",
            f"B{self.root_catalog_size}",
            f"R{self.root_path_md5}",
            f"D{self.ttl}",
            f"S{self.revision}",
            f"G{'yes' if self.garbage_collectable else 'no'}",
            f"A{'yes' if self.alternative_paths else 'no'}",
        ]
        if self.repository_name:
            lines.append(f"N{self.repository_name}")
        lines.append(f"X{self.certificate.hex}")
        if self.history is not None:
            lines.append(f"H{self.history.hex}")
        if self.timestamp > 0:
            lines.append(f"T{self.timestamp}")
        if self.metainfo is not None:
            lines.append(f"M{self.metainfo.hex}")
        if self.reflog is not None:
            lines.append(f"Y{self.reflog.hex}")
        return ("\n".join(lines) + "\n").encode("utf-8")

    def sign(self, key: rsa.RSAPrivateKey) -> bytes:
        """The complete signed ``.cvmfspublished`` bytes."""
        from rcds.format.keys import sign_manifest_hash

        return signed.join(self.body(), self.root_catalog.algorithm, lambda h: sign_manifest_hash(key, h))

    def evolve(self, **changes: Any) -> Manifest:
        """A copy with some fields changed."""
        unknown = changes.keys() - self._fields
        if unknown:
            raise TypeError(f"Manifest has no field(s) {', '.join(sorted(unknown))}")
        return self._replace(**changes)


class SignedManifest(NamedTuple):
    """A manifest as read from the wire, with its envelope for signature checks."""

    manifest: Manifest
    envelope: signed.SignedText
    raw: bytes

    def verify_signature(self, certificate_key: signed.VerifyKey, what: str = ".cvmfspublished") -> None:
        """Check the body hash and the RSA signature with the repository certificate's key."""
        self.envelope.check_hash(what)
        env = self.envelope
        if not signed.verify_manifest_hash(certificate_key, env.hash_string, env.signature):
            raise IntegrityError(f"{what}: the signature does not match the repository certificate", what)


def _flag(value: str, letter: str, what: str) -> bool:
    if value not in ("yes", "no"):
        raise IntegrityError(f"{what}: key {letter} must be yes or no, not {value!r}", what)
    return value == "yes"


def _int(value: str, letter: str, what: str) -> int:
    if not (value.isascii() and value.isdigit()):  # str.isdigit alone accepts '²' and other scripts' digits
        raise IntegrityError(f"{what}: key {letter} must be a decimal number, not {value!r}", what)
    return int(value)


def _hash(value: str, letter: str, what: str) -> ContentHash:
    try:
        return ContentHash.parse(value)
    except IntegrityError:
        raise IntegrityError(f"{what}: key {letter} is not a hash string: {value!r}", what) from None


def parse(data: bytes, what: str = ".cvmfspublished") -> SignedManifest:
    """Parse a signed manifest; require the keys clients need (C, R, D, S, N, X)."""
    env = signed.split(data, what)
    fields: dict[str, str] = {}
    try:
        text = env.body.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"{what} is not UTF-8 text", what) from None
    for line in text.split("\n"):
        if line:
            fields[line[0]] = line[1:]
    missing = [k for k in "CRDSNX" if k not in fields]
    if missing:
        raise IntegrityError(f"{what} is incomplete: missing key(s) {', '.join(missing)}", what)
    if fields["R"] != ROOT_PATH_MD5:
        raise IntegrityError(f"{what}: root path hash R must be {ROOT_PATH_MD5}", what)
    m = Manifest(
        root_catalog=_hash(fields["C"], "C", what),
        root_catalog_size=_int(fields.get("B", "0"), "B", what),
        ttl=_int(fields["D"], "D", what),
        revision=_int(fields["S"], "S", what),
        repository_name=fields["N"],
        certificate=_hash(fields["X"], "X", what),
        timestamp=_int(fields.get("T", "0"), "T", what),
        garbage_collectable=_flag(fields.get("G", "no"), "G", what),
        alternative_paths=_flag(fields.get("A", "no"), "A", what),
        history=_hash(fields["H"], "H", what) if "H" in fields else None,
        metainfo=_hash(fields["M"], "M", what) if "M" in fields else None,
        reflog=_hash(fields["Y"], "Y", what) if "Y" in fields else None,
    )
    return SignedManifest(m, env, data)
