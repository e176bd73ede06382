"""The publishing web service (pubapi)."""
