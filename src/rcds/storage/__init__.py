"""Where objects and root files live: a tiny backend interface and its implementations."""
