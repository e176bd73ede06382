"""Command line: thin commands over the layers."""
