"""rcds.testing.seaweedfs: a server that stopped leaves nothing behind in /tmp."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcds.testing.seaweedfs import GRPC_OFFSET, SeaweedFS

pytestmark = pytest.mark.timeout(120)


def test_a_stopped_server_leaves_no_sockets_or_logs_in_tmp(tmp_path: Path) -> None:
    server = SeaweedFS(tmp_path / "weed")
    try:
        server.start()
        ports = [p for port in server.ports for p in (port, port + GRPC_OFFSET)]
        assert any(Path("/tmp").glob(f"seaweedfs-*-{p}.sock") for p in ports)  # what weed makes
    finally:
        server.stop()
    assert not [s for p in ports for s in Path("/tmp").glob(f"seaweedfs-*-{p}.sock")]
    assert list((tmp_path / "weed").glob("weed.*.log.INFO.*"))  # its log files went to its directory
