"""Authentication (X.509 certificates and grid proxies, bearer tokens) and authorisation.

* :mod:`.x509` verifies presented certificate chains and yields the end-entity DN
  (:mod:`.truststore` holds the trusted CAs, :mod:`.dn` formats DNs);
* :mod:`.tls` makes server TLS contexts that accept proxies and return the presented chain;
* :mod:`.gridmap` reads the grid-mapfile (DN -> account), re-reading it when it changes;
* :mod:`.tokens` verifies WLCG/SciTokens JWTs of configured issuers;
* :mod:`.identity` has :class:`Identity` and the group :class:`Authorizer`;
* :mod:`.authenticator` picks the credential of a request and returns its :class:`Identity`.
"""

from __future__ import annotations

from rcds.service.auth.authenticator import Authenticator, is_loopback
from rcds.service.auth.dn import dn_string
from rcds.service.auth.gridmap import GridMap, normalize_dn, parse_gridmap
from rcds.service.auth.identity import ANONYMOUS_LOOPBACK, Authorizer, Identity
from rcds.service.auth.tokens import TokenVerifier, parse_bearer, scope_grants
from rcds.service.auth.truststore import TrustStore
from rcds.service.auth.x509 import VerifiedChain, verify_chain

__all__ = [
    "ANONYMOUS_LOOPBACK",
    "Authenticator",
    "Authorizer",
    "GridMap",
    "Identity",
    "TokenVerifier",
    "TrustStore",
    "VerifiedChain",
    "dn_string",
    "is_loopback",
    "normalize_dn",
    "parse_bearer",
    "parse_gridmap",
    "scope_grants",
    "verify_chain",
]
