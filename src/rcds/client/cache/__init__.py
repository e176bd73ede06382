"""The client's caches: the local cache under a quota, the shared alien cache, and reading through them."""
