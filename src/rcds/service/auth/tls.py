"""Server-side TLS that accepts grid proxy certificates and yields the client's whole chain.

The problem: to map a client to a grid-mapfile DN the server needs the chain the client
presented (proxy, proxy's signer, ..., user certificate), not only the leaf, which for a
proxy user is the proxy with a DN such as ``/DC=org/.../CN=Alice/CN=1234567``.  With Python
3.11's :mod:`ssl`, ``getpeercert(binary_form=True)`` returns the leaf only, there is no verify
callback (so the ``SSLVerifyClient optional_no_ca`` trick of Apache is impossible), and
``SSLSocket.get_unverified_chain()`` only becomes public in Python 3.13.

What works, with the standard library only (this module):

1. OpenSSL itself verifies RFC 3820 proxy chains when ``X509_V_FLAG_ALLOW_PROXY_CERTS`` is
   set; :mod:`ssl` exposes it as :data:`ssl.VERIFY_ALLOW_PROXY_CERTS` (Python >= 3.10).
   :func:`server_context` builds a context with ``CERT_OPTIONAL`` (token clients need no
   certificate), that flag, and the CAs of a :class:`~rcds.service.auth.x509.TrustStore`
   given as ``cadata`` (so no ``c_rehash``-ed directory is needed, and OpenSSL trusts exactly
   what :func:`~rcds.service.auth.x509.verify_chain` trusts).  A chain that fails
   verification aborts the handshake (the client sees a TLS alert, not an HTTP 401).
2. :func:`peer_chain` returns the presented chain, leaf first: through the public
   ``get_unverified_chain()`` on Python >= 3.13, and through the same method of the
   underlying ``_ssl._SSLSocket`` object (``sslsock._sslobj``), present since Python 3.10, on
   3.11 and 3.12.  It works for :class:`ssl.SSLSocket` (threaded servers: ``self.request`` of
   a ``socketserver`` handler) and :class:`ssl.SSLObject` (asyncio:
   ``transport.get_extra_info("ssl_object")``).
3. :func:`authenticate_peer` re-verifies that chain with :func:`verify_chain` (proxy rules,
   path lengths, the end-entity DN) and returns the :class:`VerifiedChain`.

Limits of this approach: legacy (pre-RFC, ``CN=proxy``) proxies fail the OpenSSL handshake
("invalid CA certificate"), since OpenSSL 1.1+ knows no legacy proxies; they are still
accepted by :func:`verify_chain` when the chain arrives another way (e.g. from a TLS
terminator such as Apache with ``SSLVerifyClient optional_no_ca`` and
``SSLOptions +ExportCertData``).

The alternative considered was pyOpenSSL (``Context.set_verify`` with an accept-all callback
and ``Connection.get_peer_cert_chain()``, which on the server side omits the leaf).  It works,
legacy proxies included, but it pins ``cryptography`` to a narrow range (pyOpenSSL 26.2 needs
cryptography < 49, 26.4 needs >= 49), offers only blocking sockets without ``makefile`` (so
neither asyncio nor :mod:`http.server` can use it directly), and its maintainers recommend
:mod:`ssl` for new code.  It was therefore not used.
"""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path
from typing import Any

from cryptography import x509

from rcds.errors import AuthError
from rcds.service.auth.truststore import TrustStore
from rcds.service.auth.x509 import VerifiedChain, verify_chain

__all__ = ["authenticate_peer", "client_context", "peer_chain", "server_context"]

_DER = 2  # _ssl.ENCODING_DER; the constant is not public on Python < 3.13


def server_context(
    cert_file: str | Path,
    key_file: str | Path,
    trust: TrustStore | None = None,
    *,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` (TLS >= 1.2) that requests client certificates.

    Without ``trust`` no client certificate is requested.  With it, clients may present a
    certificate or RFC 3820 proxy chain issued by one of its CAs (``require_client_cert``
    makes one mandatory); a presented chain that does not verify fails the handshake.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if trust is not None:
        ctx.load_verify_locations(cadata=trust.pem())
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        ctx.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    return ctx


def client_context(
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    *,
    ca_file: str | Path | None = None,
    ca_data: str | None = None,
) -> ssl.SSLContext:
    """A client context presenting ``cert_file`` (a certificate or proxy followed by its chain,
    as in an X509_USER_PROXY file) and trusting ``ca_file``/``ca_data`` for the server."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None, cadata=ca_data)
    if cert_file is not None:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file is not None else None)
    return ctx


def peer_chain(conn: ssl.SSLSocket | ssl.SSLObject) -> list[x509.Certificate]:
    """The certificate chain the peer presented during the handshake, leaf first.

    Empty when the client sent no certificate.  Only valid after the handshake.
    """
    public = getattr(conn, "get_unverified_chain", None)
    if public is not None:  # Python >= 3.13: DER bytes
        raw: Any = public()
    else:
        sslobj = getattr(conn, "_sslobj", None)
        getter = getattr(sslobj, "get_unverified_chain", None)
        if getter is None:
            raise RuntimeError("this Python's ssl module cannot return the peer's certificate chain")
        raw = getter()
    certs: list[x509.Certificate] = []
    for item in raw or ():
        if item is None:  # Python 3.11/3.12 servers put the (absent) peer certificate first
            continue
        der = item if isinstance(item, bytes) else item.public_bytes(_DER)
        certs.append(x509.load_der_x509_certificate(der))
    return certs


def authenticate_peer(
    conn: ssl.SSLSocket | ssl.SSLObject, trust: TrustStore, *, now: dt.datetime | None = None
) -> VerifiedChain:
    """Verify the peer's presented chain against ``trust``; :class:`AuthError` (401) if there
    is none or it is unacceptable."""
    chain = peer_chain(conn)
    if not chain:
        raise AuthError("no client certificate presented", status=401)
    return verify_chain(chain, trust, now=now)
