"""Worker node role: the repositories as a read-only FUSE file system (``rcds mount``)."""
