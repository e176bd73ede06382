"""The worker process side of ``rcds get`` (see :mod:`rcds.client.get.procs`).

A worker is a fresh interpreter running :func:`serve` on two inherited pipe ends. It says
``("ready",)``; its first request is a :class:`Setup` (servers, proxies, network settings,
caches); every further request is ``(batch number, [Job, ...])``: objects to download, verify
and write to their destination files. It answers ``("done", batch number)`` once every file of
the batch is in place, or ``("error", error class name, message)`` and stops. At end of file on
the request pipe it commits what it queued for the local cache, answers ``("bye", stats)`` and
exits. SIGTERM stops it at once, or, while it writes a file, once that file is complete: no
file is ever left half-written under its name (nor a temp file) by a worker told to stop.

Everything it writes is verified first, exactly as in the caller's process: the downloads go
through :func:`rcds.client.fetch.bulk.fetch_objects` on a :class:`~rcds.net.fetcher.Fetcher` of its
own (same servers, proxies and settings; it starts on the caller's current server).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import NamedTuple, cast

from rcds.client.cache.alien import AlienCache
from rcds.client.cache.local import LocalCache
from rcds.client.cache.source import CachedSource
from rcds.client.fetch.bulk import Wanted, fetch_objects
from rcds.client.get.fs import read_umask, write_file
from rcds.client.get.pipes import Receiver, Sender
from rcds.errors import RcdsError
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.net.fetcher import Fetcher
from rcds.net.proxies import ProxyConfig
from rcds.net.settings import NetSettings

__all__ = ["Job", "Setup", "Target", "WireJob", "WireTarget", "read_jobs", "serve", "wire_job"]


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

    def open(self) -> CachedSource:
        """A source of its own, as described."""
        fetcher = Fetcher(self.servers, self.proxies, self.settings)
        cache = LocalCache(Path(self.cache_dir), self.quota_bytes)
        alien = AlienCache(Path(self.alien_dir)) if self.alien_dir is not None else None
        return CachedSource(fetcher, cache, alien)


def run_jobs(source: CachedSource, jobs: list[Job], keep: bool) -> None:
    """Fetch the objects of ``jobs`` and write every target (see :func:`write_file`)."""
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
    try:
        source = setup.open()
        while True:
            try:
                message = requests.recv()
                number, jobs = cast(tuple[int, list[WireJob]], message)
            except EOFError:
                break
            run_jobs(source, read_jobs(jobs), setup.keep)
            replies.send(("done", number))
        source.flush()
        replies.send(("bye", dict(source.stats)))
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


def _report(replies: Sender, kind: str, message: str) -> None:
    with suppress(OSError):
        replies.send(("error", kind, message))
