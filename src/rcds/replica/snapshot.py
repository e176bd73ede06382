"""Stratum 1 snapshot: replicate the current revision of a repository into a local store.

This is the ``cvmfs_swissknife pull`` algorithm (format reference section 9.2):

1. refuse an upstream without ``.cvmfs_master_replica``;
2. verify manifest, certificate and whitelist against the master key(s), and refuse a revision
   older than the replica's (a stale upstream must not roll the replica back);
3. walk the catalogs from the root; a catalog already in the replica is skipped with its whole
   subtree (Merkle property), any other one is downloaded (hash verified), every object it
   references is copied as raw stored bytes by a thread pool, its nested catalogs are pulled, and
   only then is the catalog itself stored (children before parents), so a catalog in the replica
   always has its complete subtree, even after a crash;
4. copy the certificate (and history / meta-info objects), then ``.cvmfswhitelist`` and, last,
   ``.cvmfspublished``, byte-identical to what was verified;
5. ``.cvmfs_is_snapshotting`` exists while this runs; ``.cvmfs_last_snapshot`` is written at the end,
   and the new root catalog is appended to ``.rcds-roots`` (the revisions ``gc`` keeps).

A snapshot killed at any moment (even SIGKILL) leaves the previous manifest in place, and with
it a complete previous revision; the next snapshot skips every object and every (complete)
catalog already stored, and reads the certificate it holds from disk, so it downloads only
what is still missing.

The replica directory is laid out exactly like a stratum 0's public tree, so
:func:`rcds.serve.http.make_server` can serve it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from rcds.errors import IntegrityError, LockedError, NotFoundError
from rcds.format import manifest as manifest_fmt
from rcds.format.dirent import FLAG_EXTERNAL
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.net.failures import FetchError
from rcds.replica.copier import Batch, ObjectCopier, RecordingSource, fetch_raw, temp_name, write_temp
from rcds.repo.catalog import Catalog
from rcds.repo.source import Source
from rcds.repo.view import establish_trust
from rcds.storage.base import Store
from rcds.storage.local import LocalStore
from rcds.storage.locate import open_store

log = logging.getLogger("rcds.replica")

MASTER_REPLICA = ".cvmfs_master_replica"
LAST_SNAPSHOT = ".cvmfs_last_snapshot"
IS_SNAPSHOTTING = ".cvmfs_is_snapshotting"
ROOTS = ".rcds-roots"
"""The root catalogs a replica has served, one hash string per line, oldest first."""
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_INFLATE_STEP = 1 << 20


@dataclass(frozen=True)
class SnapshotResult:
    """What one snapshot did.

    ``catalogs_skipped`` counts catalogs found already replicated (each with its whole subtree);
    ``objects_fetched`` / ``bytes_fetched`` count objects downloaded and stored (catalogs are
    counted in ``catalogs_fetched``, their bytes in ``bytes_fetched``).
    """

    fqrn: str
    revision: int
    catalogs_fetched: int
    catalogs_skipped: int
    objects_fetched: int
    bytes_fetched: int
    seconds: float


def init_replica(dest: Path | str) -> Store:
    """Create (or open) a replica store: a directory (``data/00`` ... ``data/ff`` and ``data/txn``
    are made) or ``s3://bucket/prefix`` (the bucket must exist; AWS settings from the environment)."""
    return open_store(dest, create=True)


def date_utc(when: dt.datetime | None = None) -> str:
    """``when`` (default now) as ``date --utc`` prints it in the C locale, with a newline.

    E.g. ``Fri Oct 18 08:01:07 UTC 2024`` (the day of month is space-padded, like ``%e``).
    """
    t = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return (
        f"{_DAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t.day:2d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} UTC {t.year}\n"
    )


@contextlib.contextmanager
def replica_lock(store: Store) -> Iterator[None]:
    """One writer (snapshot or gc) per replica at a time: an exclusive ``flock`` on ``data``.

    An S3 replica has no directory: the lock is a file in the temp directory named after the
    location, so snapshots of one host exclude each other (run one replicator per bucket prefix).
    """
    if isinstance(store, LocalStore):
        fd = os.open(store.root / "data", os.O_RDONLY | os.O_DIRECTORY)
    else:
        digest = hashlib.sha256(store.location.encode()).hexdigest()[:24]
        fd = os.open(
            Path(tempfile.gettempdir()) / f"rcds-replica-{digest}.lock", os.O_RDWR | os.O_CREAT, 0o600
        )
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another snapshot is writing the replica {store.location}; try again when it has finished"
            ) from None
        yield
    finally:
        os.close(fd)


def _check_master_replica(source: Source) -> None:
    try:
        source.root_file(MASTER_REPLICA)
    except (NotFoundError, FetchError) as exc:
        if isinstance(exc, FetchError) and not exc.not_found:
            raise
        raise NotFoundError(
            f"{source.location} has no {MASTER_REPLICA}: it does not allow replication to stratum 1 "
            "servers (ask its operators to enable it, or check the URL)"
        ) from exc


def _replica_manifest(dest: Store) -> manifest_fmt.Manifest | None:
    if not dest.has(".cvmfspublished"):
        return None
    try:
        return manifest_fmt.parse(dest.get(".cvmfspublished")).manifest
    except IntegrityError as exc:
        log.warning("ignoring the unreadable manifest of the replica %s: %s", dest.location, exc)
        return None


def _check_rollback(fqrn: str, old: manifest_fmt.Manifest | None, new: manifest_fmt.Manifest) -> None:
    if old is None:
        return
    if old.repository_name != fqrn:
        raise IntegrityError(
            f"the replica holds repository {old.repository_name!r}, not {fqrn!r}; use another directory",
            ".cvmfspublished",
        )
    if new.revision < old.revision:
        raise IntegrityError(
            f"the upstream offers revision {new.revision} of {fqrn}, older than the replica's revision "
            f"{old.revision}: refusing to roll the replica back (the upstream is stale or replayed)",
            ".cvmfspublished",
        )
    if new.revision == old.revision and new.root_catalog != old.root_catalog:
        raise IntegrityError(
            f"the upstream's revision {new.revision} of {fqrn} has root catalog {new.root_catalog.hex}, "
            f"the replica's has {old.root_catalog.hex}: two different histories, refusing to replace it",
            ".cvmfspublished",
        )


class _Walker:
    """Pulls a catalog tree, post-order (see the module docstring)."""

    def __init__(self, source: Source, dest: Store, copier: ObjectCopier) -> None:
        self.source = source
        self.dest = dest
        self.copier = copier
        self.fetched = 0
        self.skipped = 0
        self.bytes = 0

    def pull(self, h: ContentHash, mountpoint: str, size: int | None) -> None:
        """Replicate the catalog ``h`` mounted at ``mountpoint`` and everything below it."""
        name = h.object_name(ObjectKind.CATALOG)
        if self.dest.has(name):
            self.skipped += 1
            return
        what = f"catalog {mountpoint or '/'} ({h.hex})"
        raw = fetch_raw(self.source, h, ObjectKind.CATALOG, f"the catalog of {mountpoint or '/'}")
        self.fetched += 1
        self.bytes += len(raw)
        raw_tmp = write_temp(self.dest, raw)
        try:
            db = temp_name(self.dest, "cat")
            try:
                _inflate_to(raw, db, size, what)
                del raw
                batch = Batch()
                with Catalog(db, mountpoint, what=what) as cat:
                    self._enqueue_objects(cat, what, batch)
                    nested = cat.nested()
            finally:
                db.unlink(missing_ok=True)
            for child_mount, child_hash, child_size in nested:
                self.pull(child_hash, child_mount, child_size or None)
            batch.wait()
            self.copier.sync_if_dirty()  # the subtree must be durable before the catalog appears
            self.dest.put_file(name, raw_tmp)
            self.copier.mark_dirty()
        finally:
            raw_tmp.unlink(missing_ok=True)
        log.debug("replicated %s", what)

    def _enqueue_objects(self, cat: Catalog, what: str, batch: Batch) -> None:
        queries = (
            (ObjectKind.FILE, "SELECT DISTINCT hash, flags FROM catalog WHERE hash IS NOT NULL"),
            (
                ObjectKind.PARTIAL,
                "SELECT DISTINCT chunks.hash, catalog.flags FROM chunks "
                "JOIN catalog USING (md5path_1, md5path_2)",
            ),
        )
        for kind, sql in queries:
            for raw_hash, flags in cat.db.execute(sql):
                if int(flags) & FLAG_EXTERNAL or not raw_hash:
                    continue  # external data is not in the repository; empty blob = no content
                if not isinstance(raw_hash, bytes) or len(raw_hash) != 20:
                    raise IntegrityError(f"{what} has a malformed content hash {raw_hash!r}", what)
                h = ContentHash(Algorithm.from_flag_value((int(flags) >> 8) & 7), raw_hash)
                self.copier.enqueue(h, kind, what, batch)


def _inflate_to(raw: bytes, path: Path, size: int | None, what: str) -> None:
    """Decompress a (hash-verified) catalog into ``path`` piecewise, checking its size."""
    d = zlib.decompressobj()
    written = 0
    view = memoryview(raw)
    try:
        with open(path, "xb") as f:
            for off in range(0, len(view), _INFLATE_STEP):
                out = d.decompress(view[off : off + _INFLATE_STEP])
                written += len(out)
                f.write(out)
            out = d.flush()
            written += len(out)
            f.write(out)
    except zlib.error as exc:
        raise IntegrityError(f"{what} is not a valid zlib stream ({exc})", what) from None
    if not d.eof or d.unused_data:
        raise IntegrityError(f"{what} is a truncated or padded zlib stream", what)
    if size and written != size:
        raise IntegrityError(f"{what}: size mismatch, expected {size} bytes, found {written}", what)


def snapshot(
    source: Source,
    fqrn: str,
    master_keys: Sequence[RSAPublicKey],
    dest: Store,
    *,
    workers: int = 8,
    now: dt.datetime | None = None,
) -> SnapshotResult:
    """Replicate the current revision of ``fqrn`` from ``source`` into the replica store ``dest``.

    ``now`` is the time for the whitelist expiry check and ``.cvmfs_last_snapshot`` (default: the
    clock). Raises NotFoundError when the upstream forbids replication, IntegrityError for anything
    that fails verification or would roll the replica back, NetworkError when the upstream cannot
    be reached, LockedError when another snapshot writes ``dest``. On failure the replica keeps
    serving its previous revision; the objects copied so far are reused by the next snapshot.
    """
    start = time.monotonic()
    with replica_lock(dest):
        dest.clean_temp()
        _check_master_replica(source)
        recorder = RecordingSource(source, dest)
        trust = establish_trust(recorder, fqrn, master_keys, now=now)
        m = trust.manifest
        _check_rollback(fqrn, _replica_manifest(dest), m)
        log.info("snapshot of %s revision %d from %s", fqrn, m.revision, source.location)
        dest.put(IS_SNAPSHOTTING, date_utc(now).encode())
        try:
            copier = ObjectCopier(source, dest, workers)
            walker = _Walker(source, dest, copier)
            try:
                walker.pull(m.root_catalog, "", m.root_catalog_size or None)
            finally:
                copier.close()
            extra_objects, extra_bytes = _copy_manifest_objects(source, recorder, dest, m)
            dest.sync()
            _copy_root_files(source, recorder, dest)
            if isinstance(dest, LocalStore):  # served roots are kept for replica gc (local replicas)
                record_root(dest.root, m.root_catalog)
            dest.put(LAST_SNAPSHOT, date_utc(now).encode())
        finally:
            dest.delete(IS_SNAPSHOTTING)
            with contextlib.suppress(OSError):
                dest.clean_temp()
    result = SnapshotResult(
        fqrn=fqrn,
        revision=m.revision,
        catalogs_fetched=walker.fetched,
        catalogs_skipped=walker.skipped,
        objects_fetched=copier.fetched + extra_objects,
        bytes_fetched=walker.bytes + copier.bytes + extra_bytes,
        seconds=time.monotonic() - start,
    )
    log.info("snapshot of %s done: %s", fqrn, result)
    return result


def _copy_manifest_objects(
    source: Source, recorder: RecordingSource, dest: Store, m: manifest_fmt.Manifest
) -> tuple[int, int]:
    """Store the certificate (the verified bytes) and the history / meta-info objects if missing."""
    count = size = 0
    cert_name = m.certificate.object_name(ObjectKind.CERTIFICATE)
    if dest.put_if_absent(cert_name, recorder.objects[cert_name]):
        count, size = 1, len(recorder.objects[cert_name])
    for h, kind in ((m.history, ObjectKind.HISTORY), (m.metainfo, ObjectKind.METAINFO)):
        if h is not None and not dest.has(h.object_name(kind)):
            raw = fetch_raw(source, h, kind, ".cvmfspublished")
            dest.put(h.object_name(kind), raw)
            count, size = count + 1, size + len(raw)
    return count, size


def _copy_root_files(source: Source, recorder: RecordingSource, dest: Store) -> None:
    """Write the whitelist (and its PKCS#7 companion, if it declares one), then the manifest, last."""
    whitelist = recorder.root_files[".cvmfswhitelist"]
    body = whitelist.split(b"\n--\n", 1)[0]
    if b"Vpkcs7" in body.split(b"\n"):
        dest.put(".cvmfswhitelist.pkcs7", source.root_file(".cvmfswhitelist.pkcs7"))
    dest.put(".cvmfswhitelist", whitelist)
    dest.put(".cvmfspublished", recorder.root_files[".cvmfspublished"])


def served_roots(replica_dir: Path) -> list[ContentHash]:
    """The root catalogs recorded in ``.rcds-roots``, oldest first (unreadable lines are skipped)."""
    try:
        lines = (Path(replica_dir) / ROOTS).read_text(encoding="ascii", errors="replace").split()
    except FileNotFoundError:
        return []
    out: list[ContentHash] = []
    for line in lines:
        with contextlib.suppress(ValueError, IntegrityError):
            out.append(ContentHash.parse(line))
    return out


def record_root(replica_dir: Path, root: ContentHash) -> None:
    """Append ``root`` to ``.rcds-roots`` unless it is already the newest entry."""
    known = served_roots(replica_dir)
    if known and known[-1] == root:
        return
    with open(Path(replica_dir) / ROOTS, "a", encoding="ascii") as f:
        f.write(root.hex + "\n")


def write_roots(replica_dir: Path, roots: Sequence[ContentHash]) -> None:
    """Replace ``.rcds-roots`` with ``roots`` (atomically)."""
    path = Path(replica_dir) / ROOTS
    tmp = path.with_name(ROOTS + ".tmp")
    tmp.write_text("".join(r.hex + "\n" for r in roots), encoding="ascii")
    os.replace(tmp, path)
