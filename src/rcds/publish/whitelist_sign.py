"""Signing a repository's whitelist, here or on another machine, and installing a signed one.

The whitelist (``.cvmfswhitelist``) lists the repository certificate's fingerprint and is signed
by the master key, which clients trust. It expires (30 days by default), so it must be re-signed
regularly: by :meth:`rcds.publish.stratum0.Stratum0.resign` where the master key lives next to the
repository (``keys/<fqrn>.masterkey``), or, to keep the master key off the server, by
:func:`sign_offline` on another machine and :func:`install_whitelist` on the server.

Every whitelist written is first checked the way clients check it (signature by the master
public key ``keys/<fqrn>.pub``, repository name, the certificate's fingerprint listed, not
expired), so a wrong key or a stale file never replaces a working whitelist.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from rcds.errors import ConfigError, IntegrityError, RcdsError
from rcds.format import keys
from rcds.format import whitelist as whitelist_fmt
from rcds.format.hashes import Algorithm
from rcds.publish.layout import Layout, Settings
from rcds.storage.base import Store

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

WHITELIST = ".cvmfswhitelist"


def load_master_key(path: Path, name: str) -> rsa.RSAPrivateKey:
    """The master private key at ``path``; a missing or unreadable key says what to do instead."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the master key of {name} ({path}: {exc.strerror or exc}); put it back, or "
            f"re-sign elsewhere with 'rcds repo resign {name} --whitelist-only --master-key KEY "
            f"--certificate {name}.crt --out FILE' and install FILE with 'rcds repo install-whitelist'"
        ) from None
    try:
        return keys.load_private_key(pem, str(path))
    except IntegrityError as exc:
        raise ConfigError(f"the master key of {name} is unusable: {exc}") from None


def make_whitelist(
    name: str, certificate: x509.Certificate, algorithm: Algorithm, days: int, created: dt.datetime
) -> whitelist_fmt.Whitelist:
    """An unsigned whitelist for ``certificate``, valid ``days`` days from ``created``."""
    if days < 1:
        raise ConfigError("a whitelist must be valid for at least one day")
    created = created.astimezone(dt.UTC).replace(microsecond=0)
    return whitelist_fmt.Whitelist(
        created=created,
        expires=created + dt.timedelta(days=days),
        repository_name=name,
        fingerprints=(keys.fingerprint(certificate, algorithm),),
    )


def check_whitelist(
    data: bytes,
    name: str,
    master_public: rsa.RSAPublicKey,
    certificate: x509.Certificate,
    algorithm: Algorithm,
    now: dt.datetime,
    what: str = WHITELIST,
) -> whitelist_fmt.Whitelist:
    """Check signed whitelist bytes as clients will; return the whitelist."""
    signed = whitelist_fmt.parse(data, what)
    signed.verify([master_public], name, now, what)
    fp = keys.fingerprint(certificate, algorithm)
    if not signed.whitelist.lists(fp):
        raise IntegrityError(f"{what} does not list the repository certificate {fp}", what)
    return signed.whitelist


def sign_offline(
    name: str,
    master: rsa.RSAPrivateKey,
    certificate: x509.Certificate,
    algorithm: Algorithm,
    days: int,
    now: dt.datetime,
) -> bytes:
    """Signed whitelist bytes made away from the repository (only the public certificate needed)."""
    wl = make_whitelist(name, certificate, algorithm, days, now)
    data = wl.sign(master, algorithm)
    check_whitelist(data, name, master.public_key(), certificate, algorithm, now)
    return data


def _repository_keys(layout: Layout) -> tuple[rsa.RSAPublicKey, x509.Certificate]:
    pub = keys.load_public_key_file(layout.key("pub"))
    try:
        crt_pem = layout.key("crt").read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the certificate {layout.key('crt')}: {exc.strerror or exc}") from None
    return pub, keys.load_certificate(crt_pem, str(layout.key("crt")))


def current_whitelist(store: Store) -> whitelist_fmt.Whitelist | None:
    """The whitelist in the served tree, if it is there and readable."""
    try:
        return whitelist_fmt.parse(store.get(WHITELIST)).whitelist
    except RcdsError:  # missing, unreadable or malformed: nothing to compare with
        return None


def sign_whitelist(
    layout: Layout, settings: Settings, store: Store, now: dt.datetime | None = None
) -> whitelist_fmt.Whitelist:
    """Write a fresh whitelist valid for ``settings.whitelist_days`` from ``now``, signed by the
    master key next to the repository; checked against ``keys/<fqrn>.pub`` before it is written."""
    master = load_master_key(layout.key("masterkey"), settings.name)
    pub, cert = _repository_keys(layout)
    created = now or dt.datetime.now(dt.UTC)
    wl = make_whitelist(settings.name, cert, settings.algorithm, settings.whitelist_days, created)
    data = wl.sign(master, settings.algorithm)
    try:
        check_whitelist(data, settings.name, pub, cert, settings.algorithm, wl.created)
    except IntegrityError as exc:
        raise ConfigError(
            f"{layout.key('masterkey')} does not match the master public key {layout.key('pub')} clients "
            f"trust ({exc}); nothing was changed"
        ) from None
    store.put(WHITELIST, data)
    return wl


def install_whitelist(
    layout: Layout, settings: Settings, store: Store, data: bytes, now: dt.datetime
) -> whitelist_fmt.Whitelist:
    """Install a whitelist signed elsewhere, after the clients' checks; one older than the
    installed one is refused (a replayed file must not shorten the validity)."""
    pub, cert = _repository_keys(layout)
    wl = check_whitelist(data, settings.name, pub, cert, settings.algorithm, now, "the given whitelist")
    old = current_whitelist(store)
    if old is not None and wl.created < old.created:
        raise IntegrityError(
            f"the given whitelist was signed at {wl.created:%Y-%m-%d %H:%M:%S} UTC, before the installed one "
            f"({old.created:%Y-%m-%d %H:%M:%S} UTC); sign a new one",
            "the given whitelist",
        )
    store.put(WHITELIST, data)
    return wl
