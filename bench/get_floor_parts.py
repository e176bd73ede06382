"""The floors of ``bench/get_floor.py``: the tree's objects in one shared buffer, and the work a
verified copy cannot skip, run in two forked processes (from memory, or received over HTTP on a
bare pipelined socket). See that file's docstring for what each floor measures."""

from __future__ import annotations

import gc
import mmap
import os
import re
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from hashlib import sha1
from pathlib import Path
from typing import NamedTuple

import deflate
from client_child import TREE

TIMEOUT = 120.0
"""Seconds any timed run (subprocess or forked pair) may take before it is killed."""
WINDOW = 128
"""GET requests in flight per connection of the receive floor (as a worker of ``rcds get``)."""
READ = 1 << 20
"""Bytes per ``recv_into`` of the receive floor."""
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_NEW_FILE = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
_CHUNK_FILE = os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC


class Obj(NamedTuple):
    """One object of the tree: where its stored bytes are in the shared buffer, and its files."""

    name: str  # data/xx/... (the object's path below the repository's URL)
    digest: bytes
    start: int  # stored bytes: buffer[start:end]
    end: int
    size: int  # plain size
    targets: tuple[tuple[int, int], ...]  # (file number, offset; -1: the whole file)


class Tree(NamedTuple):
    """The objects of the tree in a shared buffer, the empty files, and one core's CPU per step."""

    objs: list[Obj]
    buffer: mmap.mmap
    empties: list[int]
    files: int
    plain: int
    steps: dict[str, float]


def load_tree(url: str, key: str, public: Path, scratch: Path) -> Tree:
    """Every object of the tree's regular files, read from ``public`` and checked (not timed)."""
    from rcds.client.repository import Repository

    targets: dict[str, list[tuple[int, int]]] = {}
    sizes: dict[str, tuple[bytes, int]] = {}
    empties: list[int] = []
    files = plain = 0
    with Repository.open_urls([url], [key], cache_dir=scratch / "catalog-cache", probe=False) as repo:
        for d, _, names in repo.walk(TREE):
            for n in names:
                path = f"{d}/{n}"
                if repo.lstat(path).st_mode & 0o170000 != 0o100000:
                    continue
                pieces = repo.pieces(path)
                number = files
                files += 1
                if not pieces or sum(p.size for p in pieces) == 0:
                    empties.append(number)
                    continue
                chunked = len(pieces) > 1
                for p in pieces:
                    name = p.hash.object_name(p.kind)
                    sizes[name] = (p.hash.digest, p.size)
                    targets.setdefault(name, []).append((number, p.offset if chunked else -1))
                    plain += p.size
    stored = {name: (public / name).stat().st_size for name in sizes}
    buffer = mmap.mmap(-1, sum(stored.values()))  # shared with the forked children, no copy
    objs: list[Obj] = []
    steps = {"sha1": 0.0, "inflate": 0.0, "adler32": 0.0}
    pos = 0
    for name, (digest, size) in sizes.items():
        data = (public / name).read_bytes()
        buffer[pos : pos + len(data)] = data
        t0 = time.process_time()
        ok = sha1(data).digest() == digest
        t1 = time.process_time()
        out = deflate.zlib_decompress(data, size)
        t2 = time.process_time()
        ok = ok and len(out) == size and int.from_bytes(data[-4:], "big") == deflate.adler32(out)
        t3 = time.process_time()
        if not ok:
            raise SystemExit(f"{public / name}: not the object its name and catalog say")
        steps["sha1"] += t1 - t0
        steps["inflate"] += t2 - t1
        steps["adler32"] += t3 - t2
        objs.append(Obj(name, digest, pos, pos + len(data), size, tuple(targets[name])))
        pos += len(data)
    return Tree(objs, buffer, empties, files, plain, steps)


def halves(tree: Tree) -> list[tuple[list[Obj], list[int]]]:
    """The objects (and empty files) in two halves of about the same bytes (largest first, each
    to the lighter half); within a half, in the catalog's order (as a share of ``rcds get``)."""
    order = {o.name: i for i, o in enumerate(tree.objs)}
    weight = [0, 0]
    parts: list[list[Obj]] = [[], []]
    for o in sorted(tree.objs, key=lambda o: -(o.end - o.start + o.size * len(o.targets))):
        side = 0 if weight[0] <= weight[1] else 1
        parts[side].append(o)
        weight[side] += o.end - o.start + o.size * len(o.targets)
    return [(sorted(parts[i], key=lambda o: order[o.name]), tree.empties[i::2]) for i in range(2)]


def do_work(o: Obj, data: memoryview, own: str, shared: str) -> None:
    """Verify one object and write its files (the work floor's per-object step)."""
    if sha1(data).digest() != o.digest:
        raise SystemExit(f"{o.name}: wrong SHA-1")
    out = deflate.zlib_decompress(data, o.size)
    for number, offset in o.targets:
        if offset < 0:
            fd = os.open(f"{own}/{number}", _NEW_FILE, 0o644)
            written = os.write(fd, out)
        else:
            fd = os.open(f"{shared}/{number}", _CHUNK_FILE, 0o644)
            written = os.pwrite(fd, out, offset)
        os.close(fd)
        if written != o.size:
            raise SystemExit(f"{o.name}: short write")


def make_empties(empties: list[int], own: str) -> None:
    """Create the empty files of a half."""
    for number in empties:
        os.close(os.open(f"{own}/{number}", _NEW_FILE, 0o644))


def work_half(buffer: mmap.mmap, objs: list[Obj], empties: list[int], own: str, shared: str) -> None:
    """The work floor of one half: every object from memory, verified and written."""
    view = memoryview(buffer)
    for o in objs:
        do_work(o, view[o.start : o.end], own, shared)
    make_empties(empties, own)


def receive_half(
    address: tuple[str, int],
    requests: list[bytes],
    objs: list[Obj],
    on_body: Callable[[Obj, memoryview], None] | None,
) -> None:
    """Pipeline ``requests`` on one socket, ``WINDOW`` in flight; each body discarded, or, with
    ``on_body``, collected (into one buffer, reused) and handed to it. Every answer must be a 200
    of the object's stored size. A server that closes the connection between answers (nginx after
    ``keepalive_requests``, 1,000) gets a new one and the unanswered requests again."""
    sock = connect(address)
    rbuf = bytearray(READ)
    mv = memoryview(rbuf)
    head = bytearray()
    body = memoryview(bytearray(max((o.end - o.start for o in objs), default=0) if on_body else 0))
    total = len(requests)
    sent = min(WINDOW, total)
    sock.sendall(b"".join(requests[:sent]))
    done = left = filled = 0
    reconnected = -1
    while done < total:
        n = sock.recv_into(rbuf)
        if n == 0:
            if left or head or done == reconnected:
                raise SystemExit(f"the server closed the connection after {done} of {total} answers")
            sock.close()
            sock = connect(address)
            sock.sendall(b"".join(requests[done:sent]))
            reconnected = done
            continue
        pos = 0
        while pos < n:
            if left == 0:
                head += mv[pos:n]
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    pos = n
                    continue
                pos = n - (len(head) - end - 4)
                m = _CONTENT_LENGTH.search(head, 0, end + 2)
                o = objs[done]
                if not head.startswith(b"HTTP/1.1 200 ") or m is None or int(m[1]) != o.end - o.start:
                    raise SystemExit(f"{o.name}: unexpected answer {bytes(head[:end])!r}")
                left, filled = o.end - o.start, 0
                head.clear()
            take = min(left, n - pos)
            if on_body is not None:
                body[filled : filled + take] = mv[pos : pos + take]
                filled += take
            pos += take
            left -= take
            if left == 0:
                if on_body is not None:
                    on_body(objs[done], body[:filled])
                done += 1
                if sent < total and sent - done <= WINDOW // 2:
                    more = min(total, done + WINDOW)
                    sock.sendall(b"".join(requests[sent:more]))
                    sent = more
    sock.close()


def connect(address: tuple[str, int]) -> socket.socket:
    """A new connection to the server (``TCP_NODELAY``, as the client's)."""
    sock = socket.create_connection(address, timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def forked(jobs: list[Callable[[], None]]) -> tuple[float, list[tuple[float, float]]]:
    """Run each job in a forked process at once; the wall from the first fork to the last exit
    and each child's user and system CPU seconds (``wait4``). A failed or late child ends it."""
    t0 = time.perf_counter()
    pids = []
    for job in jobs:
        pid = os.fork()
        if pid == 0:  # the child: the job, then out without any of the parent's clean-up
            code = 1
            try:
                gc.disable()
                job()
                code = 0
            except SystemExit as exc:
                print(f"floor child: {exc}", file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        pids.append(pid)
    fds = {os.pidfd_open(pid): pid for pid in pids}
    cpu: dict[int, tuple[float, float]] = {}
    wall = 0.0
    try:
        while fds:
            ready, _, _ = select.select(list(fds), [], [], max(0.0, t0 + TIMEOUT - time.perf_counter()))
            if not ready:
                raise SystemExit(f"the forked runs took longer than {TIMEOUT:.0f} s")
            for fd in ready:
                pid = fds.pop(fd)
                os.close(fd)
                _, status, usage = os.wait4(pid, 0)
                wall = time.perf_counter() - t0
                if status != 0:
                    raise SystemExit(f"a forked run failed (status {status})")
                cpu[pid] = (usage.ru_utime, usage.ru_stime)
    finally:
        for fd, pid in fds.items():  # only after a failure: ours, by pid
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)
    return wall, [cpu[pid] for pid in pids]
