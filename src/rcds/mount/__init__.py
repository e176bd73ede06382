"""The worker node: the FUSE mount, and unprivileged access for pilots (``rcds exec``, ``rcds probe``)."""
