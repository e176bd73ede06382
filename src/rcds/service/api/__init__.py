"""The pubapi resources, one module each: publish, exists, update, status, config, ping."""
