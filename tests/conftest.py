"""Shared test helpers: small seeded models and data, made in the test."""

from __future__ import annotations

import pytest
import torch

from evad.models import EVAD, build_model


def sharpen_attention(model: torch.nn.Module, factor: float) -> None:
    """Scale every encoder ``attn.qkv.weight`` so attention logits spread (order 1): random
    weights otherwise give near-uniform attention whose importance values tie within float noise
    (shared/docs/design.md, "Near-ties")."""
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if name.startswith("blocks.") and name.endswith("attn.qkv.weight"):
                prm.mul_(factor)


@pytest.fixture(scope="session")
def tiny_model() -> EVAD:
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    sharpen_attention(model, 4.0)
    return model


@pytest.fixture
def clip_small() -> torch.Tensor:
    """One seeded normalised (1, 3, 16, 96, 160) clip."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, 16, 96, 160, generator=g)
