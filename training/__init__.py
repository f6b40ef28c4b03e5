"""evad.training (work in progress)."""
