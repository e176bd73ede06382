"""A worker process: a fresh interpreter with a request pipe and a reply pipe.

Used where work must run outside the caller's GIL (ingest compression, ``rcds get`` downloads).
Workers are started with fork+exec (:mod:`subprocess`): never a plain ``fork``, since callers may
be multithreaded; and unlike the ``spawn`` and ``forkserver`` contexts of :mod:`multiprocessing`,
the caller's ``__main__`` is not imported again. A worker runs ``serve(request_fd, reply_fd)`` of
a module; it should exit when its request pipe reaches end of file, so that killing the parent
never leaves workers behind. Workers run in their own session: Ctrl-C on a terminal reaches only
the parent, which stops them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys

PIPE_BYTES = 1 << 20
"""Requested capacity of each pipe."""
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["WorkerProcess", "configured_count", "widen_pipe"]


def widen_pipe(fd: int, nbytes: int = PIPE_BYTES) -> None:
    """Ask for a pipe capacity of ``nbytes`` on ``fd`` (where the system allows it; else as is)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, nbytes)


def configured_count(variable: str, cap: int | None = None) -> int:
    """Workers to use: the integer in environment ``variable`` (unparsable: 0, i.e. none), else the
    CPU count (at most ``cap``)."""
    raw = os.environ.get(variable, "").strip()
    if raw:
        try:
            return max(0, int(raw))
        except ValueError:
            return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cpus if cap is None else min(cpus, cap)


class WorkerProcess:
    """Runs ``module.serve(request_fd, reply_fd)`` in a fresh interpreter.

    ``requests`` (write end) and ``replies`` (read end) are :class:`Connection` objects;
    ``capacity`` is the request pipe's size in bytes (what may be sent without blocking).
    """

    def __init__(self, module: str, pipe_bytes: int = PIPE_BYTES) -> None:
        # Imported here: a caller that only needs widen_pipe or configured_count (the forked
        # workers of rcds get) does not pay for them at start-up (~10 ms).
        import subprocess
        from multiprocessing.connection import Connection

        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.requests = Connection(req_w, readable=False)
        self.replies = Connection(rep_r, writable=False)
        for fd in (req_w, rep_w):
            widen_pipe(fd, pipe_bytes)
        try:
            self.capacity = int(fcntl.fcntl(req_w, _F_GETPIPE_SZ))
        except OSError:
            self.capacity = 1 << 16
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH", "")]))
        code = f"import sys; from {module} import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, str(req_r), str(rep_w)],
                pass_fds=(req_r, rep_w),
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            self.requests.close()
            self.replies.close()
            raise
        finally:
            os.close(req_r)  # only the worker holds these ends: EOF reaches it when we go
            os.close(rep_w)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def exit_code(self, wait: float = 1.0) -> int | None:
        """The exit code once the process ended (waits up to ``wait`` seconds), else None."""
        import subprocess

        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(wait)
        return self.process.returncode

    def stop(self, timeout: float) -> None:
        """Close the request pipe (the worker sees EOF and exits); kill it after ``timeout`` s."""
        import subprocess

        with contextlib.suppress(OSError):
            self.requests.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self.replies.close()

    def terminate(self, timeout: float = 5.0) -> None:
        """Ask the worker to stop now (SIGTERM: it cleans up), then :meth:`stop` it."""
        with contextlib.suppress(OSError):
            self.process.terminate()
        self.stop(timeout)
