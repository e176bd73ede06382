"""nginx on loopback serving the bench repository and its tarballs: what a real stratum 1 runs.

The server block is the project's sample (``examples/nginx/rcds-replica.conf``, also used by
``tests/replica/test_nginx.py``) with only its listen address and root changed, plus one exact
``location`` per tarball so that the ``curl | tar`` routes fetch from the same nginx. nginx runs
in one process (``master_process off; worker_processes 1``, so that the bench can read its CPU
time from ``/proc``), with ``sendfile on`` (as distribution packages ship it) and no access log
(the engine's server in the bench logs nothing either).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from rcds.testing.nginx import NGINX, loopback_site, run_nginx
from rcds.testing.processes import free_port

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nginx" / "rcds-replica.conf"


def nginx_binary() -> str | None:
    """The nginx executable, or None if it is not installed."""
    return NGINX


def start_nginx(
    public: Path, fqrn: str, work: Path, tarballs: list[str]
) -> tuple[subprocess.Popen[bytes], str]:
    """nginx serving ``public`` as ``/cvmfs/<fqrn>`` (and the named tarballs in it); its base URL."""
    if NGINX is None:
        raise FileNotFoundError("nginx is not installed")
    work.mkdir(parents=True, exist_ok=True)
    srv = work / "srv"
    (srv / "cvmfs").mkdir(parents=True, exist_ok=True)
    link = srv / "cvmfs" / fqrn
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(public.resolve())
    port = free_port()
    extra = "".join(
        f"    location = /cvmfs/{fqrn}/{name} {{ types {{ }} default_type application/octet-stream; }}\n"
        for name in tarballs
    )
    site = loopback_site(EXAMPLE.read_text(), port, srv, extra)
    proc = run_nginx(site, port, work, http="access_log off; sendfile on; tcp_nopush on;")
    return proc, f"http://127.0.0.1:{port}/cvmfs/{fqrn}"
