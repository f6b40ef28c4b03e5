"""evad.runtime (work in progress)."""
