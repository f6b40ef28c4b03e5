"""evad.evaluation (work in progress)."""
