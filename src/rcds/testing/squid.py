"""A real Squid on a free loopback port, run from a sample configuration (tests and benches).

:class:`Squid` takes the lines of a configuration (e.g. ``examples/squid/site-squid.conf``),
replaces the site-specific directives (ports, directories, users, who may connect: see
:func:`loopback_config`) and runs ``squid -N`` in the foreground, after ``squid -z`` when the
configuration has a ``cache_dir``. Stop it with :meth:`Squid.stop` (or use it as a context
manager). Nothing here is used by rcds at run time.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from rcds.testing.processes import free_port, stop_process, wait_listening

SQUID = shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)
"""The squid binary, or None when Squid is not installed."""


def _key(line: str) -> str:
    words = line.split()
    if not words or words[0].startswith("#"):
        return ""
    return " ".join(words[:2]) if words[0] == "acl" else words[0]


def loopback_config(
    lines: Iterable[str], directory: Path, port: int, extra: Mapping[str, str] | None = None
) -> list[str]:
    """``lines`` with every site-specific directive replaced for a private loopback instance.

    Directives are matched by name (``acl`` by name and ACL name); a ``cache_dir`` keeps its
    store type but moves into ``directory`` with 1 GB and 4x16 subdirectories. ``extra`` replaces (or adds)
    more directives, e.g. ``{"minimum_expiry_time": "minimum_expiry_time 0 seconds"}``.
    """
    d = directory
    repl: dict[str, str] = {
        "http_port": f"http_port 127.0.0.1:{port}",
        "acl localnet": "acl localnet src 127.0.0.0/8",
        "acl stratum_ones": "acl stratum_ones dst 127.0.0.0/8",
        "acl Safe_ports": "acl Safe_ports port 1-65535",
        "access_log": f"access_log stdio:{d}/access.log",
        "cache_log": f"cache_log {d}/cache.log",
        "pid_filename": f"pid_filename {d}/squid.pid",
        "coredump_dir": f"coredump_dir {d}",
        "visible_hostname": "visible_hostname rcds-test-squid",
        "shutdown_lifetime": "shutdown_lifetime 0 seconds",
        "cache_store_log": "cache_store_log none",
        "netdb_filename": "netdb_filename none",
        "logfile_rotate": "logfile_rotate 0",
        "pinger_enable": "pinger_enable off",
        "dns_nameservers": "dns_nameservers 127.0.0.1",  # loopback origins only: never ask real DNS
    }
    repl.update(extra or {})
    out: list[str] = []
    done: set[str] = set()
    for raw in lines:
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        k = _key(line)
        if not k:
            continue
        if k == "cache_dir":  # same store type, a private directory, a test-sized layout
            kind = line.split()[1]
            line = f"cache_dir {kind} {d / 'cache'} 1024 4 16"
        elif k in repl:
            if k in done:
                continue
            line = repl[k]
            done.add(k)
        out.append(line)
    out += [v for k, v in repl.items() if k not in done]
    return out


class Squid:
    """A Squid proxy on a free loopback port, from configuration ``lines`` (see :func:`loopback_config`)."""

    def __init__(self, lines: Iterable[str], extra: Mapping[str, str] | None = None) -> None:
        if SQUID is None:
            raise RuntimeError("squid is not installed (apt-get install squid)")
        self.dir = Path(tempfile.mkdtemp(prefix="rcds-squid-"))
        self.port = free_port()
        self.access_log = self.dir / "access.log"
        conf_lines = loopback_config(lines, self.dir, self.port, extra)
        if os.geteuid() == 0:
            user = _unprivileged_user()
            conf_lines.append(f"cache_effective_user {user}")
            pw = pwd.getpwnam(user)
            (self.dir / "cache").mkdir()
            for p in (self.dir, self.dir / "cache"):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)
        self.conf = self.dir / "squid.conf"
        self.conf.write_text("\n".join(conf_lines) + "\n")
        self._stderr = open(self.dir / "stderr.log", "wb")  # noqa: SIM115 - closed in stop()
        if any(line.startswith("cache_dir ") for line in conf_lines):
            subprocess.run(
                [SQUID, "-N", "-z", "-f", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                timeout=60,
            )
        self.proc = subprocess.Popen(
            [SQUID, "-N", "-f", str(self.conf)], stdout=subprocess.DEVNULL, stderr=self._stderr
        )
        self._wait_ready()

    @classmethod
    def from_file(cls, path: Path, extra: Mapping[str, str] | None = None) -> Squid:
        """Run a Squid from a sample configuration file."""
        return cls(Path(path).read_text().splitlines(), extra)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (for ``CVMFS_HTTP_PROXY``)."""
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float = 30.0) -> None:
        if wait_listening(self.proc, self.port, timeout):
            return
        if self.proc.poll() is not None:
            self._stderr.close()
            raise RuntimeError(f"squid exited with {self.proc.returncode}:\n{self.logs()}")
        self.stop()
        raise RuntimeError(f"squid did not listen on port {self.port} within {timeout} s")

    def logs(self) -> str:
        """The end of Squid's stderr and cache log (for error messages)."""
        out = []
        for f in (self.dir / "stderr.log", self.dir / "cache.log"):
            with contextlib.suppress(OSError):
                out.append(f.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def log_lines(self) -> list[str]:
        """The access log so far (Squid writes it line-buffered)."""
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def wait_logged(self, needle: str, count: int = 1, timeout: float = 5.0) -> list[str]:
        """Access-log lines containing ``needle``, waiting (bounded) until there are ``count``."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.log_lines() if needle in line]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop Squid (TERM, then KILL after 10 s) and remove its directory."""
        stop_process(self.proc, 10)
        self._stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Squid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unprivileged_user() -> str:
    for name in ("proxy", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root but there is neither a 'proxy' nor a 'nobody' user for squid")
