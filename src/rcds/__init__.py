"""rcds: the Rapid Code Distribution Service.

User code published in seconds through a CernVM-FS-compatible, content-addressed,
signed, HTTP-cached read-only file system.

Layers (imports point downward only)::

    format -> storage -> net -> repo -> (publish | replica | client | serve | notify | mount)
        -> service -> jobs -> cli
"""

__version__ = "0.1.0"
