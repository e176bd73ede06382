"""Revision notifications in the stock CernVM-FS wire format (``cvmfs/notify/messages.cc``).

Two JSON messages travel, both UTF-8 objects on one line:

* a subscription, sent by a subscriber as the body of ``GET <server>/notifications/subscribe``::

      {"version":1,"repository":"<fqrn>"}

* an activity, POSTed by a publisher to ``<server>/notifications/publish`` and sent by the broker
  as a server-sent event ``data: <activity>\\n\\n``::

      {"version":1,"timestamp":"07 Dec 2026 07:50:01","type":"activity",
       "repository":"<fqrn>","manifest":"<base64 of the whole signed .cvmfspublished>"}

Parsing is strict: a wrong type, a missing key, bad base64, an unknown version or an oversized
message is an :class:`~rcds.errors.InputError` naming the problem. Keys stock does not know are
ignored (stock ignores them too). A notification is only a hint: the manifest in it must still be
verified against the repository's trust chain by whoever acts on it.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import re
import time
from typing import NamedTuple

from rcds.errors import InputError, IntegrityError
from rcds.format import manifest as manifest_fmt
from rcds.format.names import is_repository_name

VERSION = 1
MAX_MESSAGE = 1 << 20
"""Largest message accepted (a signed manifest is ~1 KiB; its base64 a third more)."""
MAX_SUBSCRIPTION = 4096
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_STAMP = re.compile(r"(\d{1,2}) ([A-Z][a-z]{2}) (\d{4}) (\d{2}):(\d{2}):(\d{2})")


def format_timestamp(seconds: float) -> str:
    """Stock's ``StringifyTime(t, utc=true)``: ``07 Dec 2026 07:50:01`` (English month, UTC)."""
    t = time.gmtime(seconds)
    return (
        f"{t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )


def parse_timestamp(text: str) -> int | None:
    """Seconds since the epoch of a stock timestamp, or None if it has another form."""
    m = _STAMP.fullmatch(text)
    if m is None or m.group(2) not in _MONTHS:
        return None
    day, _, year, hh, mm, ss = m.groups()
    try:
        return calendar.timegm(
            (int(year), _MONTHS.index(m.group(2)) + 1, int(day), int(hh), int(mm), int(ss), 0, 0, 0)
        )
    except (ValueError, OverflowError):
        return None


def check_repository(name: object, what: str = "repository") -> str:
    """A repository name (:mod:`rcds.format.names`) as notifications carry it, else InputError."""
    if not isinstance(name, str) or not is_repository_name(name, qualified=False):
        raise InputError(
            f"notification {what} must be a repository name like sw.example.org, not {name!r}", what
        )
    return name


class Activity(NamedTuple):
    """An activity message: a repository published the revision in ``manifest`` (signed bytes)."""

    repository: str
    manifest: bytes
    timestamp: str
    version: int = VERSION

    @classmethod
    def of(cls, manifest: bytes, *, now: float | None = None) -> Activity:
        """The message for a signed manifest (the repository name is taken from its ``N`` key)."""
        try:
            name = manifest_fmt.parse(manifest).manifest.repository_name
        except IntegrityError as exc:
            raise InputError(f"cannot announce this manifest: {exc}") from None
        return cls(
            check_repository(name), bytes(manifest), format_timestamp(time.time() if now is None else now)
        )

    def to_json(self) -> bytes:
        """The message as one line of compact JSON (what publishers POST and events carry)."""
        return json.dumps(
            {
                "version": self.version,
                "timestamp": self.timestamp,
                "type": "activity",
                "repository": self.repository,
                "manifest": base64.b64encode(self.manifest).decode("ascii"),
            },
            separators=(",", ":"),
        ).encode("ascii")

    def signed_manifest(self) -> manifest_fmt.SignedManifest:
        """The manifest parsed (not verified); IntegrityError if it is not one or names another repository."""
        sm = manifest_fmt.parse(self.manifest, "notified manifest")
        if sm.manifest.repository_name != self.repository:
            raise IntegrityError(
                f"the notified manifest is for {sm.manifest.repository_name!r}, "
                f"the message says {self.repository!r}",
                "notified manifest",
            )
        return sm


def _object(data: bytes | str, limit: int, what: str) -> dict[str, object]:
    if len(data) > limit:
        raise InputError(f"{what} is {len(data)} bytes; at most {limit} are accepted", what)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} is not JSON ({exc}); send one JSON object", what) from None
    if not isinstance(obj, dict):
        raise InputError(f"{what} must be a JSON object, not {type(obj).__name__}", what)
    return obj


def _version(obj: dict[str, object], what: str) -> int:
    v = obj.get("version")
    if type(v) is not int:
        raise InputError(f"{what}: 'version' must be the number {VERSION}, not {v!r}", what)
    if v != VERSION:
        raise InputError(f"{what}: version {v} is not supported (only {VERSION})", what)
    return v


def _string(obj: dict[str, object], key: str, what: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str):
        raise InputError(f"{what}: {key!r} must be a string, not {v!r}"[:300], what)
    return v


def parse_activity(data: bytes | str) -> Activity:
    """Parse an activity message strictly (see the module docstring); InputError if malformed."""
    what = "notification"
    obj = _object(data, MAX_MESSAGE, what)
    kind = obj.get("type")
    if kind != "activity":
        raise InputError(f"{what}: 'type' must be 'activity', not {kind!r}"[:300], what)
    version = _version(obj, what)
    timestamp = _string(obj, "timestamp", what)
    repository = check_repository(obj.get("repository"), "repository")
    encoded = _string(obj, "manifest", what)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what}: 'manifest' is not valid base64", what) from None
    if not raw:
        raise InputError(f"{what}: 'manifest' is empty", what)
    return Activity(repository, raw, timestamp, version)


def build_subscription(repository: str) -> bytes:
    """The body a subscriber sends: ``{"version":1,"repository":"<fqrn>"}``."""
    return json.dumps(
        {"version": VERSION, "repository": check_repository(repository)}, separators=(",", ":")
    ).encode("ascii")


def parse_subscription(data: bytes | str) -> str:
    """The repository a subscription body asks for; InputError if malformed."""
    what = "subscription"
    obj = _object(data, MAX_SUBSCRIPTION, what)
    _version(obj, what)
    return check_repository(obj.get("repository"), "repository")
