"""nginx on loopback serving the bench repository and its tarballs: what a real stratum 1 runs.

The server block is the project's sample (``examples/nginx/rcds-replica.conf``, also used by
``tests/replica/test_nginx.py``) with only its listen address and root changed, plus one exact
``location`` per tarball so that the ``curl | tar`` routes fetch from the same nginx. nginx runs
in one process (``master_process off; worker_processes 1``, so that the bench can read its CPU
time from ``/proc``), with ``sendfile on`` (as distribution packages ship it) and no access log
(the engine's server in the bench logs nothing either).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

from rcds.testing.processes import stop_process, wait_listening

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nginx" / "rcds-replica.conf"


def nginx_binary() -> str | None:
    """The nginx executable, or None if it is not installed."""
    found = shutil.which("nginx")
    if found is not None:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(
    public: Path, fqrn: str, work: Path, tarballs: list[str]
) -> tuple[subprocess.Popen[bytes], str]:
    """nginx serving ``public`` as ``/cvmfs/<fqrn>`` (and the named tarballs in it); its base URL."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed")
    work.mkdir(parents=True, exist_ok=True)
    srv = work / "srv"
    (srv / "cvmfs").mkdir(parents=True, exist_ok=True)
    link = srv / "cvmfs" / fqrn
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(public.resolve())
    port = free_port()
    site = EXAMPLE.read_text()
    site = re.sub(r"listen \[::\]:80;\n", "", site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};").replace("root /srv;", f"root {srv};")
    extra = "".join(
        f"    location = /cvmfs/{fqrn}/{name} {{ types {{ }} default_type application/octet-stream; }}\n"
        for name in tarballs
    )
    head, _, tail = site.rpartition("}")
    (work / "site.conf").write_text(head + extra + "}" + tail)
    temps = " ".join(
        f"{k}_temp_path {work}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (work / "nginx.conf").write_text(
        f"daemon off; master_process off; worker_processes 1; pid {work}/nginx.pid;\n"
        f"error_log {work}/error.log;\nevents {{ worker_connections 256; }}\n"
        f"http {{ access_log off; sendfile on; tcp_nopush on; {temps} include {work}/site.conf; }}\n"
    )
    proc = subprocess.Popen([binary, "-c", str(work / "nginx.conf"), "-p", str(work)])
    if not wait_listening(proc, port, 15):
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited at start: see {work}/error.log")
        stop_process(proc)
        raise RuntimeError("nginx did not start within 15 s")
    return proc, f"http://127.0.0.1:{port}/cvmfs/{fqrn}"
