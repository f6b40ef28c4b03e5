"""Shared test helpers: small seeded models and data, made in the test."""

from __future__ import annotations

import pytest
import torch

from evad.models import EVAD, build_model


@pytest.fixture(scope="session")
def tiny_model() -> EVAD:
    """Random tiny weights, calmed (``EVAD.calm``): attention logits of order 1, so importance
    scores do not tie within float noise (docs/design.md, "Precision and parity")."""
    torch.manual_seed(0)
    return build_model("tiny").eval().calm()


@pytest.fixture
def clip_small() -> torch.Tensor:
    """One seeded normalised (1, 3, 16, 96, 160) clip."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 16, 96, 160, generator=g)
