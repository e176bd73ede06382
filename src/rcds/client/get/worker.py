"""The worker process side of ``rcds get`` (see :mod:`rcds.client.get.procs`).

A worker is a fresh interpreter running :func:`serve` on two inherited pipe ends. It says
``("ready",)``; its first request is a :class:`Setup` (servers, proxies, network settings,
caches); every further request is ``(batch number, [Job, ...])``: objects to download, verify
and write to their destination files. It answers ``("done", batch number)`` once every file of
the batch is in place, or ``("error", error class name, message)`` and stops. At end of file on
the request pipe it commits what it queued for the local cache, answers ``("bye", stats)`` and
exits. SIGTERM stops it at once, or, while it writes a file, once that file is complete: no
file is ever left half-written under its name (nor a temp file) by a worker told to stop.

Everything it writes is verified first, exactly as in the caller's process. A batch goes
through :func:`run_batch`: one loop over the pipelined download of
:meth:`Fetcher.fetch_many <rcds.net.fetcher.Fetcher.fetch_many>` (fail-over, bad data retried
without caches and elsewhere) on a fetcher of its own (same servers, proxies and settings; it
starts on the caller's current server), with the object names formatted from the jobs' plain
values, each body verified inline (:func:`_verify`) and its files written as it arrives. Only
with an alien cache or for a large object does a batch take the general path,
:func:`rcds.client.fetch.bulk.fetch_objects` (:func:`run_jobs`).

Start-up is part of the cost of every ``rcds get``: a worker that neither fills the cache nor
uses an alien cache (the usual case) imports no cache module (nor ``sqlite3``, ``pathlib``,
``logging``'s users in the cache): those are imported when the setup needs them.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from hashlib import sha1 as _sha1
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple, cast

from rcds.client.get.fs import read_umask, write_file
from rcds.client.get.pipes import Receiver, Sender
from rcds.errors import RcdsError
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.net.failures import FetchError
from rcds.net.fetcher import Fetcher
from rcds.net.proxies import ProxyConfig
from rcds.net.settings import NetSettings

if TYPE_CHECKING:
    from rcds.client.cache.source import CachedSource
    from rcds.client.fetch.bulk import Wanted

_libdeflate: ModuleType | None
try:
    import deflate as _libdeflate
except ImportError:  # pragma: no cover - a platform without its wheel: verify_sized does it all
    _libdeflate = None

__all__ = [
    "FAST_MAX",
    "WINDOW",
    "Job",
    "Setup",
    "Target",
    "WireJob",
    "WireTarget",
    "read_jobs",
    "run_batch",
    "run_jobs",
    "serve",
    "wire_job",
]

FAST_MAX = 8 << 20
"""Objects up to this plain size go through :func:`run_batch` (the main process sends no larger
ones: :data:`rcds.client.fetch.bulk.BULK_MAX_OBJECT`, the same value, not imported: start-up)."""
WINDOW = 128
"""Requests in flight per connection of a worker's fetcher: a batch is hundreds of objects, and
each send of requests costs the sender a wake-up of the server (32 by default elsewhere)."""


class Target(NamedTuple):
    """A destination file of an object: where, and the attributes :func:`write_file` sets."""

    final: str
    path: str
    mode: int
    size: int
    mtime: int
    mtimens: int | None


class Job(NamedTuple):
    """One object to fetch (plain ``size`` bytes) and every file that gets its content.

    Plain values only (``digest``, algorithm and kind values), so that pickling stays in C.
    """

    digest: bytes
    algorithm: str
    kind: str
    size: int
    compressed: bool
    targets: tuple[Target, ...]

    @classmethod
    def of(
        cls, h: ContentHash, kind: ObjectKind, size: int, compressed: bool, targets: tuple[Target, ...]
    ) -> Job:
        """The job for object ``h`` of ``kind``."""
        return cls(h.digest, h.algorithm.value, kind.value, size, compressed, targets)

    def wanted(self) -> Wanted:
        """What :func:`~rcds.client.fetch.bulk.fetch_objects` takes."""
        from rcds.client.fetch.bulk import Wanted

        return _NEW(
            Wanted,
            (
                ContentHash(_ALGORITHMS[self.algorithm], self.digest),
                _KINDS[self.kind],
                self.size,
                self.compressed,
            ),
        )


_ALGORITHMS = {a.value: a for a in Algorithm}
_KINDS = {k.value: k for k in ObjectKind}
"""The enum members by value: a dict lookup, not an ``Enum`` call, per object."""
_NEW = tuple.__new__
_SHA1 = Algorithm.SHA1._value_

WireTarget = tuple[str, str, int, int, int, "int | None"]
WireJob = tuple[bytes, str, str, int, bool, tuple[WireTarget, ...]]
"""A :class:`Job` as sent: plain tuples, which pickle in C alone (a NamedTuple costs a Python
call each way, six times the time). A :class:`Job` is one too."""


def wire_job(
    h: ContentHash, kind: ObjectKind, size: int, compressed: bool, targets: list[WireTarget]
) -> WireJob:
    """The job for object ``h`` of ``kind`` as sent (``targets``: :class:`Target` fields)."""
    # _value_: an attribute, not the enum's ``value`` property (a Python call) per object
    return (h.digest, h.algorithm._value_, kind._value_, size, compressed, tuple(targets))


def read_jobs(batch: Sequence[WireJob]) -> list[Job]:
    """The jobs of a batch as received."""
    return [_NEW(Job, (d, a, k, s, c, tuple([_NEW(Target, t) for t in ts]))) for d, a, k, s, c, ts in batch]


class Setup(NamedTuple):
    """How a worker reaches the repository and which caches it uses.

    A NamedTuple, not a dataclass: a worker then imports no ``dataclasses`` (nor ``inspect``),
    part of its start-up CPU.
    """

    servers: tuple[str, ...]
    proxies: ProxyConfig
    settings: NetSettings
    cache_dir: str
    quota_bytes: int | None
    alien_dir: str | None
    keep: bool

    @classmethod
    def of(cls, source: CachedSource, keep: bool) -> Setup:
        """The setup that makes a worker fetch like ``source`` (and fill its caches if ``keep``)."""
        fetcher = source.fetcher
        return cls(
            tuple(fetcher.preferred_servers()),
            fetcher.proxies,
            fetcher.settings,
            str(source.cache.dir),
            source.cache.quota_bytes,
            str(source.alien.dir) if source.alien is not None else None,
            keep,
        )

    @property
    def uses_caches(self) -> bool:
        """True if the worker fills the local cache or has an alien cache (:meth:`open` needed)."""
        return self.keep or self.alien_dir is not None

    def fetcher(self) -> Fetcher:
        """A fetcher of its own, as described."""
        return Fetcher(self.servers, self.proxies, self.settings)

    def open(self, fetcher: Fetcher | None = None) -> CachedSource:
        """A source of its own, as described (on ``fetcher`` if given)."""
        from pathlib import Path

        from rcds.client.cache.alien import AlienCache
        from rcds.client.cache.local import LocalCache
        from rcds.client.cache.source import CachedSource

        cache = LocalCache(Path(self.cache_dir), self.quota_bytes)
        alien = AlienCache(Path(self.alien_dir)) if self.alien_dir is not None else None
        return CachedSource(fetcher or self.fetcher(), cache, alien)


def run_jobs(source: CachedSource, jobs: list[Job], keep: bool) -> None:
    """Fetch the objects of ``jobs`` and write every target (see :func:`write_file`).

    The general path (alien cache, large objects): :func:`~rcds.client.fetch.bulk.fetch_objects`.
    """
    from rcds.client.fetch.bulk import fetch_objects

    global _writing
    wanted = [j.wanted() for j in jobs]
    for i, plain in fetch_objects(source, wanted, keep=keep):
        for t in jobs[i].targets:
            _writing = True  # SIGTERM now waits for the end of this file
            try:
                write_file(t.final, t, plain)
            finally:
                _writing = False
            if _stopping:
                raise SystemExit(128 + signal.SIGTERM)


def run_batch(
    fetcher: Fetcher,
    batch: Sequence[WireJob],
    source: CachedSource | None = None,
    after: Callable[[int], None] | None = None,
) -> int:
    """Fetch, verify and write the objects of one batch as received; returns how many were downloaded.

    Every object at most :data:`FAST_MAX` bytes. With ``source``, each object is also queued
    for its local cache (``--fill-cache``; ``source`` must have no alien cache: see
    :func:`run_jobs`). ``after(index)`` is called once the files of ``batch[index]`` are in
    place, if given. Raises what :func:`~rcds.client.fetch.bulk.fetch_objects` raises for an
    object no server has intact; the files written before are complete.
    """
    global _writing
    names = [wire_name(d, a, k) for d, a, k, _, _, _ in batch]

    def verify(i: int, raw: bytes) -> bytes | bytearray:
        d, a, _, size, compressed, _ = batch[i]
        return _verify(raw, d, a, size, compressed, names[i])

    inserter = source.inserter if source is not None else None
    received = 0
    try:
        for i, plain in fetcher.fetch_many(names, verify):
            received += 1
            job = batch[i]
            if inserter is not None:
                inserter.put(ContentHash(_ALGORITHMS[job[1]], job[0]), _KINDS[job[2]], bytes(plain))
            for t in job[5]:
                _writing = True  # SIGTERM now waits for the end of this file
                try:
                    write_file(t[0], _NEW(Target, t), plain)
                finally:
                    _writing = False
                if _stopping:
                    raise SystemExit(128 + signal.SIGTERM)
            if after is not None:
                after(i)
    except FetchError as exc:
        from rcds.repo.http_source import translate

        raise translate(exc.path, exc) from exc
    return received


def wire_name(digest: bytes, algorithm: str, kind: str) -> str:
    """The repository object name (:meth:`ContentHash.object_name`) from an object's plain values
    as they cross a pipe (digest, algorithm and kind values); its cache name is this without
    ``data/``. SHA-1 (nearly every object) without making a hash object."""
    if algorithm != _SHA1:
        return ContentHash(_ALGORITHMS[algorithm], digest).object_name(_KINDS[kind])
    h = digest.hex()
    return f"data/{h[:2]}/{h[2:]}{kind}"


def _verify(
    raw: bytes, digest: bytes, algorithm: str, size: int, compressed: bool, what: str
) -> bytes | bytearray:
    """:func:`~rcds.format.wholeinflate.verify_sized` of a job's plain values, inline for the
    usual object (SHA-1, compressed, not empty): the hash of the stored bytes, then libdeflate
    inflates exactly ``size`` bytes and the stream's Adler-32 trailer must end the bytes.
    Anything else, or any doubt, goes to ``verify_sized`` (the precise error, or the content)."""
    lib = _libdeflate
    if lib is not None and compressed and size > 0 and algorithm == _SHA1 and _sha1(raw).digest() == digest:
        try:
            out: bytearray = lib.zlib_decompress(raw, size)
        except lib.DeflateError:
            pass
        else:
            if len(out) == size and int.from_bytes(raw[-4:], "big") == lib.adler32(out):
                return out
    from rcds.format.wholeinflate import verify_sized

    return verify_sized(
        raw, ContentHash(_ALGORITHMS[algorithm], digest), size, compressed=compressed, what=what
    )


_writing = False
_stopping = False


def _stop(signum: int, frame: object) -> None:
    """SIGTERM: stop now, or after the file being written (see :func:`run_jobs`)."""
    global _stopping
    if _writing:
        _stopping = True
        return
    raise SystemExit(128 + signum)


def serve(request_fd: int, reply_fd: int) -> None:
    """The worker's main loop (see the module docstring)."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    gc.disable()  # each batch makes thousands of short-lived tuples, none in cycles: no collections
    requests = Receiver(request_fd)
    replies = Sender(reply_fd)
    read_umask()
    replies.send(("ready",))
    try:
        setup = requests.recv()
        assert isinstance(setup, Setup)
    except EOFError:
        return
    source: CachedSource | None = None
    stats = {"local": 0, "alien": 0, "network": 0}
    fetcher = setup.fetcher()
    fetcher.pipeline_window = WINDOW
    try:
        if setup.uses_caches:
            source = setup.open(fetcher)
        while True:
            try:
                message = requests.recv()
                number, batch = cast(tuple[int, list[WireJob]], message)
            except EOFError:
                break
            if any(j[3] > FAST_MAX for j in batch) or (source is not None and source.alien is not None):
                if source is None:
                    source = setup.open(fetcher)
                run_jobs(source, read_jobs(batch), setup.keep)
            else:
                stats["network"] += run_batch(fetcher, batch, source if setup.keep else None)
            replies.send(("done", number))
        if source is not None:
            source.flush()
            for where, n in source.stats.items():
                stats[where] += n
        replies.send(("bye", stats))
    except RcdsError as exc:
        _report(replies, type(exc).__name__, str(exc))
    except (BrokenPipeError, ConnectionResetError):  # the parent is gone
        pass
    except Exception as exc:  # a bug: tell the parent what happened
        import traceback  # here: a worker that works never needs it (start-up time)

        text = "".join(traceback.format_exception_only(exc)).strip()
        _report(replies, "", f"{text} (pid {os.getpid()})")
        traceback.print_exc(file=sys.stderr)
    finally:
        if source is not None:
            source.close()
        fetcher.close()


def _report(replies: Sender, kind: str, message: str) -> None:
    with suppress(OSError):
        replies.send(("error", kind, message))
