"""Pure codecs of the CernVM-FS 2.x format: no I/O beyond the bytes handed in."""
