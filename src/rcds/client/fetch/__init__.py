"""Fetching from servers: the verified trust chain, batched object downloads and prefetch."""
