"""Who a request comes from (:class:`Identity`) and what it may publish (:class:`Authorizer`).

Today any authenticated identity may publish under any CID, including another VO's
``<vo>/`` prefix (rcds-today.md 2.3).  Here an identity may publish under a CID group (the
first component of ``<group>/<hash>``) when

* one of its *principals* equals the group: the grid-mapfile account of a certificate, or a
  token group (``wlcg.groups``) without its leading ``/``; or
* the ``[acl]`` table of the configuration maps one of its principals (or ``*``, any
  authenticated identity) to the group, or to ``*`` (every group).

ACL keys are matched against the account, each token group both with and without its leading
``/``, and the identity's full name (a DN, or ``<iss>#<sub>`` for tokens).  The anonymous
loopback identity (admin tools on the server itself, allowed only while
``require_auth_on_loopback`` is false) may publish anywhere, as today.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from rcds.errors import AuthError
from rcds.service.cid import Cid

__all__ = ["ANONYMOUS_LOOPBACK", "Authorizer", "Identity", "IdentityKind"]

IdentityKind = Literal["x509", "token", "anonymous"]


@dataclass(frozen=True)
class Identity:
    """An authenticated client.

    ``name``: the end-entity DN (x509), ``<iss>#<sub>`` (token), or ``localhost``
    (anonymous).  ``account``: the grid-mapfile account (x509).  ``groups``: the token's
    ``wlcg.groups`` as given (``/dune/production``).  ``label``: a short name for logs and
    ``.publisher`` files (the certificate's ``CN=UID:`` value or last CN, the token ``sub``).
    """

    kind: IdentityKind
    name: str
    account: str | None = None
    groups: tuple[str, ...] = ()
    label: str = ""

    def principals(self) -> tuple[str, ...]:
        """The names this identity is known by for the implicit group rule: its account and
        its token groups without the leading ``/``."""
        names = [self.account] if self.account else []
        names += [g.lstrip("/") for g in self.groups if g.lstrip("/")]
        return tuple(dict.fromkeys(names))

    def acl_keys(self) -> tuple[str, ...]:
        """The ``[acl]`` keys that apply to this identity (``*`` included)."""
        keys = [*self.principals(), *self.groups, self.name, "*"]
        return tuple(dict.fromkeys(keys))

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


#: The identity of a credential-less request from the loopback interface.
ANONYMOUS_LOOPBACK = Identity(kind="anonymous", name="localhost", label="localhost")


class Authorizer:
    """Decides whether an :class:`Identity` may publish under a CID group."""

    def __init__(self, acl: Mapping[str, Sequence[str]] | None = None, *, implicit: bool = True) -> None:
        """``acl`` maps principals to CID groups (see the module docstring); ``implicit``
        enables the "principal equal to the group" rule."""
        self._acl = {k: tuple(v) for k, v in (acl or {}).items()}
        self._implicit = implicit

    def allowed_groups(self, identity: Identity) -> frozenset[str]:
        """The CID groups ``identity`` may publish under; contains ``*`` for all."""
        if identity.kind == "anonymous":
            return frozenset({"*"})
        groups: set[str] = set(identity.principals()) if self._implicit else set()
        for key in identity.acl_keys():
            groups.update(self._acl.get(key, ()))
        return frozenset(groups)

    def may_publish(self, identity: Identity, group: str | Cid) -> bool:
        """Whether ``identity`` may publish (or update) CIDs of ``group`` (a group or a CID)."""
        name = group.group if isinstance(group, Cid) else group
        allowed = self.allowed_groups(identity)
        return "*" in allowed or name in allowed

    def check(self, identity: Identity, group: str | Cid) -> None:
        """Raise :class:`AuthError` (403) unless ``identity`` may publish under ``group``."""
        if not self.may_publish(identity, group):
            name = group.group if isinstance(group, Cid) else group
            mine = sorted(self.allowed_groups(identity))
            hint = f"; allowed groups: {', '.join(mine)}" if mine else "; no groups are allowed"
            raise AuthError(
                f"{identity.label or identity.name} may not publish under group {name!r}{hint}", status=403
            )
