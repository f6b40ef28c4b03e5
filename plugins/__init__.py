"""evad.plugins (work in progress)."""
