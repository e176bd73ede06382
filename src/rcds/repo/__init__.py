"""Read-only, fully verified view of a repository from any source."""
