"""Stratum 0: create, ingest, sign, remove, garbage-collect."""
