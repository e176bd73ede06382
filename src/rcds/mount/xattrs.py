"""The extended attributes a stock CernVM-FS mount shows (``getfattr -d``), computed per entry.

Names and meanings follow stock's "magic" attributes: repository-wide ones on every entry
(``user.fqrn``, ``user.revision``, ``user.root_hash``, ``user.host``, ``user.proxy``,
``user.expires`` in minutes, ``user.nclg`` loaded catalogs...), ``user.hash``/``user.lhash`` on
entries with content, ``user.chunks``/``user.chunk_list``/``user.compression``... on regular
files, ``user.rawlink`` on symlinks. Entries that carry their own attributes in the catalog
(``xattr`` column) show those as well. Values that only make sense for stock's own machinery
are given their neutral value (``user.ncleanup24`` is -1, ``user.tag`` empty).
"""

from __future__ import annotations

import os
import stat as stat_mod
import time
from collections.abc import Callable

from rcds import __version__
from rcds.format.dirent import Dirent
from rcds.format.hashes import ObjectKind
from rcds.mount.inodes import Node
from rcds.mount.repomount import RepoMount

BASE = (
    "user.catalog_counters",
    "user.expires",
    "user.fqrn",
    "user.host",
    "user.host_list",
    "user.hitrate",
    "user.inode_max",
    "user.maxfd",
    "user.ncleanup24",
    "user.nclg",
    "user.ndiropen",
    "user.ndownload",
    "user.nioerr",
    "user.nopen",
    "user.pid",
    "user.proxy",
    "user.pubkeys",
    "user.repo_counters",
    "user.repo_metainfo",
    "user.revision",
    "user.root_hash",
    "user.rx",
    "user.speed",
    "user.tag",
    "user.timeout",
    "user.timeout_direct",
    "user.timestamp_last_ioerr",
    "user.uptime",
    "user.usedfd",
    "user.useddirp",
    "user.version",
)
WITH_HASH = ("user.hash", "user.lhash")
REGULAR = ("user.chunk_list", "user.chunks", "user.compression", "user.direct_io", "user.external_file")
SYMLINK = ("user.rawlink",)


def catalog_xattrs(blob: bytes | None) -> dict[str, bytes]:
    """The entry's own attributes from the catalog's ``xattr`` blob (version 1); {} if none or bad."""
    if not blob or blob[0] != 1 or len(blob) < 2:
        return {}
    out: dict[str, bytes] = {}
    pos, count = 2, blob[1]
    for _ in range(count):
        if pos + 2 > len(blob):
            return {}
        klen, vlen = blob[pos], blob[pos + 1]
        pos += 2
        key, value = blob[pos : pos + klen], blob[pos + klen : pos + klen + vlen]
        pos += klen + vlen
        if len(key) != klen or len(value) != vlen:
            return {}
        out[key.decode("utf-8", "surrogateescape")] = value
    return out


def names(node: Node) -> list[str]:
    """Every attribute name of a node, sorted."""
    out = list(BASE)
    e = node.entry
    if e is not None and e.hash is not None:
        out += WITH_HASH
    if stat_mod.S_ISREG(node.stat.st_mode):
        out += REGULAR
    if stat_mod.S_ISLNK(node.stat.st_mode):
        out += SYMLINK
    if e is not None:
        out += catalog_xattrs(e.xattr)
    return sorted(set(out))


def value(rm: RepoMount, node: Node, name: str) -> bytes | None:
    """The value of attribute ``name`` of ``node`` (blocking: may query catalogs), or None."""
    if name not in names(node):
        return None
    e = node.entry
    if e is not None:
        own = catalog_xattrs(e.xattr)
        if name in own:
            return own[name]
    getter = _REPO.get(name)
    if getter is not None:
        return getter(rm).encode()
    if e is None:
        return None
    return _entry_value(rm, node, e, name).encode()


def _entry_value(rm: RepoMount, node: Node, e: Dirent, name: str) -> str:
    if name == "user.hash":
        return e.hash.hex if e.hash else ""
    if name == "user.lhash":
        if e.hash is None:
            return ""
        return e.hash.hex if rm.repo.source.is_cached(e.hash, _kind(e)) else "Not in cache"
    if name == "user.rawlink":
        return e.symlink
    if name == "user.compression":
        return "Zlib" if e.compressed else "None"
    if name == "user.direct_io":
        return "0"
    if name == "user.external_file":
        return "1" if e.is_external else "0"
    chunks = rm.chunks(node.path)
    if name == "user.chunks":
        return str(len(chunks) or 1)
    rows = chunks or [(e.hash.hex if e.hash else "", 0, e.size)]
    return "hash,offset,size\n" + "".join(f"{h},{o},{s}\n" for h, o, s in rows)


def _kind(e: Dirent) -> ObjectKind:
    return ObjectKind.PARTIAL if e.is_chunked else ObjectKind.FILE


def _counters(rm: RepoMount, whole: bool) -> str:
    with rm.repo.using() as m:
        root = m.view.root_catalog()
        counters = root.counters()
    tally = counters.total() if whole else counters.self
    return "".join(f"{k}: {v}\n" for k, v in sorted(tally.values.items()))


def _current(rm: RepoMount, role: str) -> str:
    for ep in rm.repo.fetcher.status():
        if ep.role == role and ep.current:
            return ep.url
    return "DIRECT" if role == "proxy" else ""


def _hosts(rm: RepoMount) -> str:
    return ";".join(ep.url for ep in rm.repo.fetcher.status() if ep.role == "host")


def _expires(rm: RepoMount) -> str:
    info = rm.repo.info()
    return str(int(info.next_check_in // 60))


def _metainfo(rm: RepoMount) -> str:
    h = rm.repo.trust.manifest.metainfo
    if h is None:
        return "metainfo not available"
    try:
        return rm.repo.source.object(h, ObjectKind.METAINFO).decode("utf-8", "replace")
    except Exception as exc:  # shown as the value, like stock
        return f"Failed to read metadata file: {exc}"


def _fds() -> str:
    try:
        return str(len(os.listdir("/proc/self/fd")))
    except OSError:
        return "0"


_REPO: dict[str, Callable[[RepoMount], str]] = {
    "user.catalog_counters": lambda rm: _counters(rm, False),
    "user.expires": _expires,
    "user.fqrn": lambda rm: rm.fqrn,
    "user.host": lambda rm: _current(rm, "host"),
    "user.host_list": _hosts,
    "user.hitrate": lambda rm: "n/a",
    "user.inode_max": lambda rm: str((1 << 63) - 1),
    "user.maxfd": lambda rm: str(os.sysconf("SC_OPEN_MAX")),
    "user.ncleanup24": lambda rm: "-1",
    "user.nclg": lambda rm: str(len(rm.repo._current_mounted().pinned)),
    "user.ndiropen": lambda rm: str(rm.open_dirs),
    "user.ndownload": lambda rm: str(rm.repo.source.stats.get("network", 0)),
    "user.nioerr": lambda rm: str(rm.io_errors),
    "user.nopen": lambda rm: str(rm.open_files),
    "user.pid": lambda rm: str(os.getpid()),
    "user.proxy": lambda rm: _current(rm, "proxy"),
    "user.pubkeys": lambda rm: "",
    "user.repo_counters": lambda rm: _counters(rm, True),
    "user.repo_metainfo": _metainfo,
    "user.revision": lambda rm: str(rm.repo.revision),
    "user.root_hash": lambda rm: rm.repo.trust.manifest.root_catalog.hex,
    "user.rx": lambda rm: "n/a",
    "user.speed": lambda rm: "n/a",
    "user.tag": lambda rm: "",
    "user.timeout": lambda rm: f"{rm.repo.fetcher.settings.timeout.connect:g}",
    "user.timeout_direct": lambda rm: f"{rm.repo.fetcher.settings.timeout_direct.connect:g}",
    "user.timestamp_last_ioerr": lambda rm: str(int(rm.last_io_error)),
    "user.uptime": lambda rm: str(int((time.time() - rm.started) // 60)),
    "user.usedfd": lambda rm: _fds(),
    "user.useddirp": lambda rm: str(rm.open_dirs),
    "user.version": lambda rm: f"rcds {__version__}",
}
