"""``rcds get``: copying a repository subtree into a local directory, resumably and in parallel."""
