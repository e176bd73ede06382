"""A real nginx on a loopback port, run from the project's sample server block (tests and benches).

:func:`loopback_site` changes only what the sample (``examples/nginx/rcds-replica.conf``) must
change on a test machine: it listens on ``127.0.0.1:PORT`` alone and serves another root.
:func:`run_nginx` runs nginx with it in one process (no master, one worker: a bench can read its
CPU time from ``/proc``), every path of its own under ``work``, and returns once it listens; stop
it with :func:`~rcds.testing.processes.stop_process`. Nothing here is used by rcds at run time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from rcds.testing.processes import stop_process, wait_listening

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
"""The nginx binary, or None when nginx is not installed."""


def loopback_site(sample: str, port: int, root: Path, extra: str = "") -> str:
    """The server block ``sample`` listening on ``127.0.0.1:port`` only, with ``root`` as its root
    and the lines ``extra`` (e.g. more ``location`` blocks) added at its end."""
    site = re.sub(r"listen \[::\]:80;\n", "", sample)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};").replace("root /srv;", f"root {root};")
    if extra:
        head, _, tail = site.rpartition("}")
        site = head + extra + "}" + tail
    return site


def run_nginx(site: str, port: int, work: Path, http: str | None = None) -> subprocess.Popen[bytes]:
    """nginx serving the server block ``site`` (which listens on ``port``), its configuration, logs
    and temporary files in ``work``; ``http``: directives of the ``http`` block (default: an
    access log in ``work``). RuntimeError, with the end of its error log, if it does not start."""
    if NGINX is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx)")
    work.mkdir(parents=True, exist_ok=True)
    (work / "site.conf").write_text(site)
    temps = " ".join(
        f"{k}_temp_path {work}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    directives = f"access_log {work}/access.log;" if http is None else http
    (work / "nginx.conf").write_text(
        f"daemon off; master_process off; worker_processes 1; pid {work}/nginx.pid;\n"
        f"error_log {work}/error.log;\nevents {{ worker_connections 256; }}\n"
        f"http {{ {directives} {temps} include {work}/site.conf; }}\n"
    )
    with open(work / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen([NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)], stderr=stderr)
    if wait_listening(proc, port, 15):
        return proc
    stop_process(proc)
    logs = []
    for name in ("stderr.log", "error.log"):
        with contextlib.suppress(OSError):
            logs.append((work / name).read_text(errors="replace")[-2000:])
    raise RuntimeError(f"nginx did not start (exit status {proc.returncode}):\n" + "\n".join(logs))
