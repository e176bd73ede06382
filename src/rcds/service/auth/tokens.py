"""Bearer tokens: WLCG / SciTokens JWTs signed by configured issuers.

Today's server uses the scitokens library, trusts issuers listed in a file, requires the
``compute.create`` scope and uses ``sub`` as the identity (rcds-today.md 2.4).  Here, with
PyJWT and local key files only (no network fetch of ``jwks_uri`` at request time), a token is
accepted when:

* its header algorithm is RS256 or ES256 (never ``none`` or HMAC);
* its ``iss`` is a configured issuer and its signature verifies with one of that issuer's
  keys (PEM public keys or certificates, or a JWKS file; files are re-read when they change,
  so a cron job can refresh them); a ``kid`` header selects among keys that have one;
* ``aud`` contains one of the issuer's configured audiences or
  ``https://wlcg.cern.ch/jwt/v1/any``;
* ``exp`` (required), ``nbf`` and ``iat`` hold at ``now`` within a small leeway;
* ``sub`` is a non-empty string;
* ``scope`` grants the issuer's configured scope (see :func:`scope_grants`).

Failures raise :class:`AuthError` with status 401, except a missing scope on an otherwise
valid token, which is 403 (``insufficient_scope`` in RFC 6750 terms).  The resulting
:class:`Identity` is named ``<iss>#<sub>`` and carries the ``wlcg.groups`` claim.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from rcds.errors import AuthError
from rcds.service.auth._watch import WatchedFile
from rcds.service.auth.identity import Identity
from rcds.service.config import AuthConfig, TokenIssuerConfig

__all__ = [
    "DEFAULT_ALGORITHMS",
    "WLCG_ANY_AUDIENCE",
    "IssuerKey",
    "TokenVerifier",
    "load_issuer_keys",
    "parse_bearer",
    "scope_grants",
]

WLCG_ANY_AUDIENCE = "https://wlcg.cern.ch/jwt/v1/any"
DEFAULT_ALGORITHMS = ("RS256", "ES256")
MAX_TOKEN_LENGTH = 16384

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_PEM_RE = re.compile(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----", re.DOTALL)


@dataclass(frozen=True)
class IssuerKey:
    """One public key of an issuer, with its ``kid`` if the key file gives one."""

    key: PublicKey
    kid: str | None = None

    def suits(self, alg: str) -> bool:
        """Whether the key's type fits the JWS algorithm."""
        return (
            isinstance(self.key, rsa.RSAPublicKey)
            if alg.startswith(("RS", "PS"))
            else isinstance(self.key, ec.EllipticCurvePublicKey)
        )


def load_issuer_keys(data: bytes) -> tuple[IssuerKey, ...]:
    """Parse a key file: a JWKS (``{"keys": [...]}``) or single JWK in JSON, or PEM public
    keys / certificates.  Raises :class:`ValueError` when nothing usable is found."""
    text = data.strip()
    keys: list[IssuerKey] = []
    if text.startswith(b"{"):
        doc = json.loads(text)
        entries = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
        if not isinstance(entries, list):
            raise ValueError('JWKS "keys" must be an array')
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                jwk = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # unsupported key type or algorithm: skip it, as PyJWKSet does
            if isinstance(jwk.key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                keys.append(IssuerKey(jwk.key, entry.get("kid")))
    else:
        for m in _PEM_RE.finditer(text):
            block = m.group(0)
            if m.group(1) == b"CERTIFICATE":
                pub: Any = x509.load_pem_x509_certificate(block).public_key()
            else:
                pub = serialization.load_pem_public_key(block)
            if isinstance(pub, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                keys.append(IssuerKey(pub))
    if not keys:
        raise ValueError("no RSA or EC public key found (expected a JWKS JSON file or PEM public keys)")
    return tuple(keys)


def parse_bearer(authorization: str) -> str:
    """The token of an ``Authorization: Bearer <token>`` header value; 401 otherwise."""
    scheme, _, token = authorization.strip().partition(" ")
    if not scheme or not token.strip():
        raise AuthError("malformed Authorization header (expected 'Bearer <token>')", status=401)
    if scheme.lower() != "bearer":
        raise AuthError(f"unsupported authorization scheme {scheme[:20]!r} (expected Bearer)", status=401)
    return token.strip()


def scope_grants(granted: str, required: str) -> bool:
    """Whether the token scope ``granted`` covers ``required``.

    Equal scopes match; for WLCG path scopes (``storage.create:/dune``) the granted path must
    be the required path or one of its parent directories, so ``storage.create:/`` grants
    ``storage.create:/dune`` but not the reverse.
    """
    if granted == required:
        return True
    gname, gsep, gpath = granted.partition(":")
    rname, rsep, rpath = required.partition(":")
    if not (gsep and rsep and gname == rname and gpath.startswith("/") and rpath.startswith("/")):
        return False
    base = gpath.rstrip("/")
    return rpath.rstrip("/") == base or rpath.startswith(base + "/")


def _when(now: dt.datetime | float | None) -> float:
    if now is None:
        return dt.datetime.now(dt.UTC).timestamp()
    if isinstance(now, dt.datetime):
        return (now if now.tzinfo else now.replace(tzinfo=dt.UTC)).timestamp()
    return float(now)


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Issuer:
    def __init__(self, cfg: TokenIssuerConfig, min_interval: float) -> None:
        self.cfg = cfg
        self.files = [
            WatchedFile(
                p, load_issuer_keys, what=f"keys of token issuer {cfg.issuer}", min_interval=min_interval
            )
            for p in cfg.key_files
        ]

    def current_keys(self) -> list[IssuerKey]:
        return [k for f in self.files for k in f.get()]


class TokenVerifier:
    """Verifies bearer tokens of the configured issuers (see the module docstring).

    Raises :class:`~rcds.errors.ConfigError` if an issuer's key file cannot be loaded.
    """

    def __init__(
        self,
        issuers: Sequence[TokenIssuerConfig],
        *,
        leeway: float = 60.0,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        min_interval: float = 0.0,
    ) -> None:
        """``leeway``: seconds of clock skew tolerated; ``min_interval``: seconds between
        checks of the key files for changes."""
        bad = [a for a in algorithms if not a.startswith(("RS", "ES", "PS"))]
        if bad:
            raise ValueError(f"only asymmetric JWS algorithms may be allowed, not {bad}")
        self._issuers = {cfg.issuer: _Issuer(cfg, min_interval) for cfg in issuers}
        self._leeway = leeway
        self._algorithms = tuple(algorithms)

    @classmethod
    def from_config(cls, auth: AuthConfig, **kw: Any) -> TokenVerifier:
        """A verifier for the ``[[auth.token_issuers]]`` of a configuration."""
        return cls(auth.token_issuers, **kw)

    @property
    def issuers(self) -> tuple[str, ...]:
        """The trusted issuer URLs."""
        return tuple(self._issuers)

    def verify_header(self, authorization: str, *, now: dt.datetime | float | None = None) -> Identity:
        """:meth:`verify` the token of an ``Authorization`` header value."""
        return self.verify(parse_bearer(authorization), now=now)

    def verify(self, token: str, *, now: dt.datetime | float | None = None) -> Identity:
        """Check ``token`` and return its :class:`Identity`; :class:`AuthError` otherwise."""
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
            raise _invalid("malformed token (expected a compact JWT)")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise _invalid(f"malformed token: {e}") from None
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise _invalid(
                f"token algorithm {str(alg)[:20]!r} is not accepted (allowed: {', '.join(self._algorithms)})"
            )
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise _invalid("token has no issuer (iss) claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise _invalid(f"untrusted token issuer {str(iss)[:200]!r}")

        kid = header.get("kid")
        keys = [
            k
            for k in issuer.current_keys()
            if k.suits(alg) and (k.kid is None or kid is None or k.kid == kid)
        ]
        if not keys:
            raise _invalid(f"issuer {iss} has no {alg} key" + (f" with kid {str(kid)[:64]!r}" if kid else ""))
        claims: dict[str, Any] | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=[*issuer.cfg.audiences, WLCG_ANY_AUDIENCE],
                    issuer=iss,
                    options={
                        "verify_exp": False,  # checked below against an injectable `now`
                        "verify_nbf": False,
                        "verify_iat": False,
                        "require": ["exp", "iss", "sub", "aud"],
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise _invalid(f"token audience is not one of {', '.join(issuer.cfg.audiences)}") from None
            except jwt.PyJWTError as e:
                raise _invalid(str(e)) from None
        if claims is None:
            raise _invalid(f"signature does not verify with the keys of issuer {iss}")
        self._check_times(claims, _when(now))

        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise _invalid("token has an empty subject")
        scope = claims.get("scope")
        granted = scope.split() if isinstance(scope, str) else []
        required = issuer.cfg.scope
        if not any(scope_grants(g, required) for g in granted):
            raise AuthError(f"token does not grant the scope {required!r}", status=403)
        raw_groups = claims.get("wlcg.groups", [])
        groups = (
            tuple(g for g in raw_groups if isinstance(g, str) and g) if isinstance(raw_groups, list) else ()
        )
        return Identity(kind="token", name=f"{iss}#{sub}", groups=groups, label=sub)

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        def number(name: str) -> float | None:
            value = claims.get(name)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _invalid(f"token claim {name!r} is not a number")
            return float(value)

        exp, nbf, iat = number("exp"), number("nbf"), number("iat")
        assert exp is not None  # required above
        if now > exp + self._leeway:
            raise _invalid(f"token expired at {_stamp(exp)}")
        if nbf is not None and now + self._leeway < nbf:
            raise _invalid(f"token is not valid before {_stamp(nbf)}")
        if iat is not None and now + self._leeway < iat:
            raise _invalid(f"token was issued in the future ({_stamp(iat)})")


def _invalid(problem: str) -> AuthError:
    return AuthError(f"invalid bearer token: {problem}", status=401)
