"""evad-deploy: EVAD video action detection from PyTorch to production.

Stages live in sub-packages, and data flows one way: ``evad.models`` (the torch reference)
-> ``evad.export`` -> ``evad.engines`` -> ``evad.runtime``.
"""

from evad.errors import CheckpointError, ConfigError, EvadError

__version__ = "0.1.0"
__all__ = ["CheckpointError", "ConfigError", "EvadError", "__version__"]
