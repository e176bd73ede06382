"""The whitelist ``.cvmfswhitelist``: certificate fingerprints signed by the master key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from rcds.errors import IntegrityError
from rcds.format import signed
from rcds.format.hashes import Algorithm, ContentHash

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

_TIME = "%Y%m%d%H%M%S"


def _parse_time(text: str) -> dt.datetime:
    """A ``YYYYMMDDHHMMSS`` time (UTC) as ``strptime(text, _TIME)`` reads it.

    Fourteen digits are read field by field (the first ``strptime`` of a process imports its
    locale machinery, ~6 ms); anything else, or an impossible date, goes to ``strptime`` itself.
    """
    if len(text) == 14 and text.isascii() and text.isdigit():
        try:
            return dt.datetime(
                int(text[:4]),
                int(text[4:6]),
                int(text[6:8]),
                int(text[8:10]),
                int(text[10:12]),
                int(text[12:]),
                tzinfo=dt.UTC,
            )
        except ValueError:
            pass
    return dt.datetime.strptime(text, _TIME).replace(tzinfo=dt.UTC)


def _utc(t: dt.datetime) -> dt.datetime:
    return t.astimezone(dt.UTC) if t.tzinfo else t.replace(tzinfo=dt.UTC)


class Whitelist(NamedTuple):
    """Creation time, expiry, repository name and certificate fingerprints."""

    created: dt.datetime
    expires: dt.datetime
    repository_name: str
    fingerprints: tuple[str, ...]

    def body(self) -> bytes:
        """The signed text, in the exact line format stock writes."""
        lines = [
            _utc(self.created).strftime(_TIME),
            "E" + _utc(self.expires).strftime(_TIME),
            "N" + self.repository_name,
            *self.fingerprints,
        ]
        return ("\n".join(lines) + "\n").encode("ascii")

    def sign(self, master_key: rsa.RSAPrivateKey, algorithm: Algorithm = Algorithm.SHA1) -> bytes:
        """The complete signed ``.cvmfswhitelist`` bytes (raw PKCS#1 by the master key)."""
        from rcds.format.keys import sign_raw

        return signed.join(self.body(), algorithm, lambda h: sign_raw(master_key, h.encode("ascii")))

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        """Stock semantics: expired unless now's (year, month, day, hour) is strictly before E's."""
        t = _utc(now or dt.datetime.now(dt.UTC))
        e = _utc(self.expires)
        return (t.year, t.month, t.day, t.hour) >= (e.year, e.month, e.day, e.hour)

    def lists(self, fingerprint: str) -> bool:
        """True if a certificate fingerprint (``AB:CD:..[-ALGO]``) is listed."""
        return _normalise(fingerprint) in {_normalise(f) for f in self.fingerprints}


def _normalise(line: str) -> str:
    """Fingerprint comparison key: up to the first blank or '#', colons removed, lowercased."""
    cut = len(line)
    for sep in (" ", "\t", "#"):
        p = line.find(sep)
        if p >= 0:
            cut = min(cut, p)
    return line[:cut].replace(":", "").lower()


class SignedWhitelist(NamedTuple):
    """A whitelist as read from the wire."""

    whitelist: Whitelist
    envelope: signed.SignedText

    def verify(
        self,
        master_keys: Sequence[signed.VerifyKey],
        fqrn: str,
        now: dt.datetime | None = None,
        what: str = ".cvmfswhitelist",
    ) -> None:
        """Signature by one of the master keys, matching name, not expired."""
        self.envelope.check_hash(what)
        message = self.envelope.hash_string.encode("ascii")
        if not any(signed.verify_raw(k, message, self.envelope.signature) for k in master_keys):
            raise IntegrityError(
                f"{what}: the signature matches none of the master public keys given; "
                "check that you use the repository's .pub key",
                what,
            )
        if self.whitelist.repository_name != fqrn:
            raise IntegrityError(
                f"{what} is for repository {self.whitelist.repository_name!r}, not {fqrn!r}", what
            )
        if self.whitelist.is_expired(now):
            raise IntegrityError(
                f"{what} expired at {self.whitelist.expires:%Y-%m-%d %H:%M} UTC; "
                "the repository owner must re-sign it (rcds repo resign)",
                what,
            )


def parse(data: bytes, what: str = ".cvmfswhitelist") -> SignedWhitelist:
    """Parse a signed whitelist with the stock parser's rules."""
    env = signed.split(data, what)
    try:
        lines = env.body.decode("ascii").split("\n")[:-1]
    except UnicodeDecodeError:
        raise IntegrityError(f"{what} is not ASCII text", what) from None
    if len(lines) < 3 or len(lines[0]) != 14 or len(lines[1]) != 15 or not lines[1].startswith("E"):
        raise IntegrityError(f"{what}: malformed header (creation, E<expiry>, N<name> lines)", what)
    try:
        created = _parse_time(lines[0])
        expires = _parse_time(lines[1][1:])
    except ValueError:
        raise IntegrityError(f"{what}: unreadable creation or expiry time", what) from None
    if not lines[2].startswith("N"):
        raise IntegrityError(f"{what}: third line must be N<repository name>", what)
    prints: list[str] = []
    for line in lines[3:]:
        key = _normalise(line)
        try:
            ContentHash.parse(key)
        except IntegrityError:
            continue  # stock silently ignores unparsable lines (Vpkcs7, Wcachain, comments)
        prints.append(line)
    return SignedWhitelist(Whitelist(created, expires, lines[2][1:], tuple(prints)), env)
