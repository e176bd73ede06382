"""Turning a request's credentials into an :class:`Identity` (authentication).

Order, as in today's server (rcds-today.md 2.4): an ``Authorization`` header is a bearer
token and is used when present; otherwise a client certificate chain; otherwise a request from
the loopback interface is the anonymous ``localhost`` identity unless
``require_auth_on_loopback`` is set; anything else is refused.

Status codes: 401 for missing or invalid credentials (bad token, chain that does not verify,
no credentials); 403 for a valid certificate whose DN is not in the grid-mapfile (revoked by
removal) and a valid token lacking the required scope.  Today every failure is 403.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509

from rcds.errors import AuthError
from rcds.service.auth.gridmap import GridMap
from rcds.service.auth.identity import ANONYMOUS_LOOPBACK, Identity
from rcds.service.auth.tokens import TokenVerifier
from rcds.service.auth.truststore import TrustStore
from rcds.service.auth.x509 import verify_chain
from rcds.service.config import ServiceConfig

__all__ = ["Authenticator", "is_loopback"]


def is_loopback(address: str | None) -> bool:
    """Whether ``address`` is 127.0.0.0/8, ``::1`` or an IPv4-mapped loopback address."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


class Authenticator:
    """Authenticates requests from a token verifier, a CA trust store and a grid-mapfile.

    Any of the three may be None, which disables that way of authenticating.
    """

    def __init__(
        self,
        *,
        tokens: TokenVerifier | None = None,
        trust: TrustStore | None = None,
        gridmap: GridMap | None = None,
        require_auth_on_loopback: bool = False,
    ) -> None:
        self.tokens = tokens
        self.trust = trust
        self.gridmap = gridmap
        self.require_auth_on_loopback = require_auth_on_loopback

    @classmethod
    def from_config(cls, config: ServiceConfig) -> Authenticator:
        """Build from a configuration, loading the CA certificates, grid-mapfile and issuer
        keys it names (:class:`~rcds.errors.ConfigError` if one cannot be loaded)."""
        auth = config.auth
        tls = config.tls
        trust = None
        if tls is not None and (tls.ca_dir is not None or tls.ca_file is not None):
            trust = TrustStore.load(tls.ca_dir, tls.ca_file)
        return cls(
            tokens=TokenVerifier.from_config(auth) if auth.token_issuers else None,
            trust=trust,
            gridmap=GridMap(auth.grid_mapfile) if auth.grid_mapfile is not None else None,
            require_auth_on_loopback=auth.require_auth_on_loopback,
        )

    def authenticate(
        self,
        *,
        remote_addr: str | None,
        authorization: str | None = None,
        cert_chain: Sequence[x509.Certificate | bytes] | None = None,
        now: dt.datetime | None = None,
    ) -> Identity:
        """The identity of a request, or :class:`AuthError` (401/403) as described above.

        ``cert_chain`` is the chain the client presented, leaf first (see
        :func:`rcds.service.auth.tls.peer_chain`), or None/empty.
        """
        if authorization is not None and authorization.strip():
            if self.tokens is None:
                raise AuthError(
                    "bearer tokens are not accepted here (no token issuers configured)", status=401
                )
            return self.tokens.verify_header(authorization, now=now)
        if cert_chain:
            return self._from_certificate(cert_chain, now)
        if is_loopback(remote_addr) and not self.require_auth_on_loopback:
            return ANONYMOUS_LOOPBACK
        raise AuthError("token or client certificate required", status=401)

    def _from_certificate(
        self, chain: Sequence[x509.Certificate | bytes], now: dt.datetime | None
    ) -> Identity:
        if self.trust is None:
            raise AuthError("client certificates are not accepted here (no CAs configured)", status=401)
        verified = verify_chain(chain, self.trust, now=now)
        accounts = self.gridmap.accounts(verified.dn) if self.gridmap is not None else None
        if accounts is None:
            raise AuthError(f"unrecognized DN {verified.dn}", status=403)
        return Identity(
            kind="x509",
            name=verified.dn,
            account=accounts[0] if accounts else None,
            label=verified.short_name,
        )
