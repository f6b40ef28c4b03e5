"""evad.engines (work in progress)."""
