"""The template tree of the client tests: its files, links and entries (shared by conftest and tests)."""

from __future__ import annotations

import os

from testkit import NAME, Entry

BIG = bytes(os.urandom(900_000))
TEXT = b"hello rcds\n"
C1 = "/sw/g/c1"
C2 = "/sw/g/c2"
FILES: dict[str, bytes] = {
    f"{C1}/a/hello.txt": TEXT,
    f"{C1}/a/hl": TEXT,
    f"{C1}/a/big.bin": BIG,
    f"{C1}/a/empty": b"",
    f"{C1}/a/run.sh": b"#!/bin/sh\necho hi\n",
    f"{C1}/b/c/d.txt": b"deep\n",
    f"{C1}/.cvmfscatalog": b"",
    f"{C2}/x.txt": b"in c2\n",
    f"{C2}/.cvmfscatalog": b"",
}
"""Every regular file of the template repository and its content."""

LINKS = {
    f"{C1}/a/link": "hello.txt",
    f"{C1}/alib": "a",
    f"{C1}/abs": f"/cvmfs/{NAME}{C1}/a/hello.txt",
    f"{C1}/outside": "/etc/passwd",
}


def template_entries() -> list[Entry]:
    """The entries of the template tree: files, a script, links (one leaving the tree), a hard link."""
    return [
        Entry("a", kind="dir", mode=0o755),
        Entry("a/hello.txt", TEXT),
        Entry("a/big.bin", BIG),
        Entry("a/empty", b""),
        Entry("a/run.sh", FILES[f"{C1}/a/run.sh"], mode=0o755),
        Entry("a/link", kind="symlink", target="hello.txt"),
        Entry("a/hl", kind="hardlink", target="a/hello.txt"),
        Entry("b/c/d.txt", b"deep\n"),
        Entry("alib", kind="symlink", target="a"),
        Entry("abs", kind="symlink", target=LINKS[f"{C1}/abs"]),
        Entry("outside", kind="symlink", target="/etc/passwd"),
    ]
