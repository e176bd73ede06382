"""Serving a repository tree over HTTP the way a stratum needs."""
