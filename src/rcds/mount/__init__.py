"""The worker node: the repositories as a read-only FUSE file system (``rcds mount``), and
unprivileged access for pilots (``rcds exec``, ``rcds probe``)."""
