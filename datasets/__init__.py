"""evad.datasets (work in progress)."""
