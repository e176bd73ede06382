"""The client: verified reads over HTTP with caches, proxies and failover."""
