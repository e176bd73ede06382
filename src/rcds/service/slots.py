"""One slot per own repository: the lock every writer of that repository takes in this process.

The publish worker, the stamp writer and the cleaner of a repository take turns through its
slot; ``cleaning`` keeps the worker from starting new publishes while a cleanup runs, so
publishing continues in the other repositories.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from rcds.publish.stratum0 import Stratum0
from rcds.storage.base import Store


@dataclass
class RepoSlot:
    """An own repository and its in-process writer lock."""

    name: str
    s0: Stratum0
    lock: threading.Lock = field(default_factory=threading.Lock)
    cleaning: bool = False

    @property
    def public(self) -> Path | Store:
        """The served tree: ``ROOT/public``, or the store itself when it is not a directory (S3)."""
        return self.s0.layout.public if not self.s0.settings.storage else self.s0.store
