"""The chunked and large files of ``rcds get``: written piece by piece, in threads, beside the batches.

A file of several objects (chunks), or of one object over
:data:`~rcds.client.fetch.bulk.BULK_MAX_OBJECT`, is written by one of ``workers`` threads while
the batch downloads go on (:func:`write_pieced`): its pieces in the local cache are copied in
the kernel, the others downloaded pipelined (:func:`~rcds.client.fetch.bulk.fetch_objects`,
each verified and inflated whole, as the batches are) and written at their offsets with
``pwrite`` in the order they arrive. The file is written as
:func:`~rcds.client.get.fs.write_file` does: complete, with its mode and time, or not at all.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable, Sequence

from rcds.client.cache.source import CachedSource
from rcds.client.fetch.bulk import Wanted, fetch_objects
from rcds.client.get.downloads import PlannedFile
from rcds.client.get.fs import copy_into, write_file
from rcds.errors import IntegrityError

__all__ = ["write_file_of_pieces", "write_pieced"]

_NEW = tuple.__new__


def write_pieced(
    source: CachedSource,
    files: Sequence[PlannedFile],
    path: Callable[[str], str],
    *,
    keep: bool,
    workers: int,
    done: Callable[[PlannedFile], None],
    during: Callable[[], None],
) -> None:
    """Write ``files`` (at ``path(rel)``) in ``workers`` threads while ``during()`` runs (the batch
    downloads: the large files do not wait for the small ones, nor leave the cores idle at the
    end); ``done(file)`` after each. The first error is raised once the files being written are
    finished (the others are dropped)."""
    if not files:
        during()
        return
    pool = cf.ThreadPoolExecutor(max(1, workers), thread_name_prefix="rcds-get")
    futures = {pool.submit(write_file_of_pieces, source, f, path(f.rel), keep): f for f in files}
    try:
        during()
        for fut in cf.as_completed(futures):
            fut.result()
            done(futures[fut])
    finally:  # on an error: what is queued is dropped, what is being written is finished
        pool.shutdown(wait=True, cancel_futures=True)


def write_file_of_pieces(source: CachedSource, f: PlannedFile, final: str, keep: bool) -> None:
    """Write the file ``f`` to ``final`` from its pieces (see the module docstring); with ``keep``
    the downloaded pieces are added to the local cache."""
    pieces = f.pieces

    def fill(fd: int) -> int:
        missing = []
        for i, p in enumerate(pieces):
            obj = source.cached(p.hash, p.kind, p.size)
            if obj is None:
                missing.append(i)
                continue
            with obj:
                os.lseek(fd, p.offset, os.SEEK_SET)
                if copy_into(obj, fd, p.size) != p.size:
                    raise IntegrityError(
                        f"{f.attrs[1]}: object {p.hash.hex} is shorter than {p.size} bytes", f.attrs[1]
                    )
        todo = [pieces[i] for i in missing]
        wanted = [_NEW(Wanted, (p.hash, p.kind, p.size, f.compressed)) for p in todo]
        for k, plain in fetch_objects(source, wanted, keep=keep):
            _pwrite_all(fd, plain, todo[k].offset)  # exactly the piece's size: verified
        return sum(p.size for p in pieces)

    write_file(final, f.target(), fill=fill)


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
