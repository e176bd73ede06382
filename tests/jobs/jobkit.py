"""Helpers for the job tool tests (import as ``jobkit``): service configs, code trees, URLs."""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
import sys
import tarfile
from pathlib import Path
from types import ModuleType

from rcds.service.config import ListenConfig, ServeConfig, ServiceConfig
from rcds.service.runner import ServiceThread


def service_config(base: Path, **changes: object) -> ServiceConfig:
    """A default configuration on free loopback ports."""
    cfg = ServiceConfig.default(base)
    return dataclasses.replace(
        cfg, listen=ListenConfig("127.0.0.1", 0), serve=ServeConfig("127.0.0.1", 0), **changes
    )


def key_dirs(st: ServiceThread) -> tuple[Path, ...]:
    """The directories holding the repositories' master public keys (``<repo>.pub``)."""
    cfg = st.service.config
    return tuple(cfg.state_dir / name / "keys" for name in cfg.repositories)


def repo_url_template(st: ServiceThread) -> str:
    """``http://127.0.0.1:<port>/cvmfs/@fqrn@`` of the service's repository server."""
    name = st.service.config.repositories[0]
    return st.repo_url(name).replace(name, "@fqrn@")


def dead_url() -> str:
    """A loopback URL nobody listens on (a port just closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_code(root: Path, tag: str) -> Path:
    """A small code tree whose content (hence CID) depends on ``tag``."""
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "bin" / "run.sh").write_text(f"#!/bin/sh\necho {tag}\n")
    os.chmod(root / "bin" / "run.sh", 0o755)
    (root / "lib" / "data.txt").write_text(f"payload {tag}\n" * 100)
    (root / "latest").symlink_to("lib")
    return root


def make_tarball(path: Path, tag: str) -> Path:
    """A gzip tarball with one file."""
    src = path.parent / (path.name + ".src")
    src.mkdir()
    (src / "hello.txt").write_text(f"hello {tag}\n")
    with tarfile.open(path, "w:gz") as tf:
        tf.add(src / "hello.txt", arcname="hello.txt")
    return path


def load_pki() -> ModuleType:
    """The throw-away PKI helpers of the service tests (``tests/service/pki.py``)."""
    where = str(Path(__file__).resolve().parents[1] / "service")
    if where not in sys.path:
        sys.path.insert(0, where)
    return importlib.import_module("pki")
