"""evad.evaluation: frame-level mAP by the AVA evaluation protocol (``evad-eval``)."""
