"""The envelope shared by ``.cvmfspublished`` and ``.cvmfswhitelist``.

``body`` (lines ending in ``\\n``) + ``--\\n`` + hash string of the body + ``\\n`` + raw signature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rcds.errors import IntegrityError
from rcds.format.hashes import Algorithm, ContentHash

SEPARATOR = b"\n--\n"


@dataclass(frozen=True, slots=True)
class SignedText:
    """A parsed envelope: the signed body, its hash string and the signature bytes."""

    body: bytes
    hash_string: str
    signature: bytes

    def check_hash(self, what: str) -> ContentHash:
        """Recompute the body hash with the algorithm of the hash line and compare."""
        claimed = ContentHash.parse(self.hash_string)
        found = ContentHash.of(self.body, claimed.algorithm)
        if found != claimed:
            raise IntegrityError(
                f"{what}: body hash mismatch, the file says {claimed.hex}, the body hashes to {found.hex}",
                what,
            )
        return claimed


def split(data: bytes, what: str) -> SignedText:
    """Split a signed root file as the stock verifier does (first ``\\n--\\n`` wins)."""
    pos = data.find(SEPARATOR)
    if pos < 0:
        raise IntegrityError(f"{what} has no '--' signature separator line", what)
    body = data[: pos + 1]
    rest = data[pos + len(SEPARATOR) :]
    nl = rest.find(b"\n")
    if nl < 0:
        raise IntegrityError(f"{what} has no hash line after '--'", what)
    try:
        hash_string = rest[:nl].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError(f"{what} has a non-ASCII hash line", what) from None
    return SignedText(body, hash_string, rest[nl + 1 :])


def join(body: bytes, algorithm: Algorithm, signature_of: Callable[[str], bytes]) -> bytes:
    """Build an envelope: ``signature_of`` is called with the hash string and returns the signature."""
    if not body.endswith(b"\n"):
        raise ValueError("a signed body must end with a newline")
    hash_string = ContentHash.of(body, algorithm).hex
    signature = signature_of(hash_string)
    return body + b"--\n" + hash_string.encode("ascii") + b"\n" + signature
