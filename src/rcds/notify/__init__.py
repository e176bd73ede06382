"""The revision-notification broker (stock CernVM-FS protocol)."""
