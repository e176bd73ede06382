"""Creating a repository (revision 0): keys, certificate, whitelist, empty root catalog, manifest."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import stat
import time
from pathlib import Path

from rcds.errors import ConfigError, StorageError
from rcds.format import keys
from rcds.format.catalog_schema import Tally
from rcds.format.compression import make_object
from rcds.format.deflaters import resolve
from rcds.format.dirent import FLAG_DIR, Dirent
from rcds.format.hashes import ObjectKind
from rcds.format.manifest import Manifest
from rcds.publish.catalog_rw import WritableCatalog
from rcds.publish.layout import Layout, Settings
from rcds.publish.lock import WriterLock
from rcds.publish.whitelist_sign import sign_whitelist
from rcds.storage.base import Store

__all__ = ["MASTER_REPLICA_TEXT", "create_repository", "sign_whitelist"]

log = logging.getLogger("rcds.publish")
MASTER_REPLICA_TEXT = b"This file marks the repository as replicatable to stratum 1 servers\n"


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, 0o600)


def create_repository(root: Path, settings: Settings, *, now: int | None = None) -> Layout:
    """Create keys, certificate, whitelist, an empty root catalog and a signed manifest (revision 0)."""
    settings.validate()
    layout = Layout(Path(root), settings.name)
    if layout.settings_file.exists() or (layout.public / ".cvmfspublished").exists():
        raise ConfigError(f"{root} already holds a repository; choose an empty directory")
    created_root = not layout.root.exists()
    store = layout.open_store(settings, create=False) if settings.storage else None
    if store is not None and store.has(".cvmfspublished"):
        store.close()
        raise ConfigError(f"{settings.storage} already holds a repository; choose another bucket or prefix")
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        layout.keys.mkdir(mode=0o700, exist_ok=True)
        layout.work.mkdir(exist_ok=True)
        with WriterLock(layout.lock, settings.name):
            if store is None:
                store = layout.open_store(settings, create=True)
            _populate(layout, settings, store, int(now if now is not None else time.time()))
    except OSError as exc:
        raise StorageError(f"cannot create the repository under {root}: {exc}") from None
    except BaseException:
        if created_root:
            shutil.rmtree(layout.root, ignore_errors=True)
        raise
    finally:
        if store is not None:
            store.close()
    return layout


def _populate(layout: Layout, settings: Settings, store: Store, now: int) -> None:
    algo = settings.algorithm
    resolved = resolve(settings.compressor)
    if resolved.note:
        log.warning("%s: %s", settings.name, resolved.note)
    compress = resolved.compress
    master = keys.generate_key()
    repo_key = keys.generate_key()
    cert = keys.make_certificate(settings.name, repo_key)
    _write_secret(layout.key("masterkey"), keys.private_key_pem(master))
    _write_secret(layout.key("pub"), keys.public_key_pem(master.public_key()))
    _write_secret(layout.key("key"), keys.private_key_pem(repo_key))
    _write_secret(layout.key("crt"), keys.certificate_pem(cert))
    os.chmod(layout.keys, 0o700)

    cert_obj = make_object(keys.certificate_pem(cert), algo, compress)
    store.put(cert_obj.hash.object_name(ObjectKind.CERTIFICATE), cert_obj.data)
    store.put(".cvmfs_master_replica", MASTER_REPLICA_TEXT)
    sign_whitelist(layout, settings, store, dt.datetime.fromtimestamp(now, dt.UTC))

    db = layout.work / "root-0.db"
    db.unlink(missing_ok=True)
    cat = WritableCatalog.create(db, Dirent("", "", stat.S_IFDIR | 0o755, 4096, now, FLAG_DIR, hardlinks=2))
    cat.set_property("TTL", str(settings.ttl))
    cat.finalize(revision=0, previous=None, last_modified=now, subtree=Tally())
    content = db.read_bytes()
    db.unlink()
    root_obj = make_object(content, algo, compress)
    store.put(root_obj.hash.object_name(ObjectKind.CATALOG), root_obj.data)
    manifest = Manifest(
        root_catalog=root_obj.hash,
        root_catalog_size=len(content),
        ttl=settings.ttl,
        revision=0,
        repository_name=settings.name,
        certificate=cert_obj.hash,
        timestamp=now,
    )
    store.sync()
    store.put(".cvmfspublished", manifest.sign(repo_key))
    layout.save_settings(settings)
    os.chmod(layout.settings_file, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
