"""Stratum 1: replicate a repository."""
