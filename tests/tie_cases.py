"""Inputs whose keyframe-weighted importance ties exactly, shared by the kernel tests on a GPU
(test_kernels_gpu.py) and the Triton interpreter checks (triton_interpreter_checks.py): both
check the contract's tie order (descending importance, the lower position first)."""

from __future__ import annotations

import torch


def tied_queries_keys(g: torch.Generator, b: int, h: int, n: int, s: int, d: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k (B, H, N, D) float32, ranks (B, N - S) int64): the N - S non-keyframe key rows are
    equal wherever their ranks are (so their importance columns are bitwise equal), and the
    importance grows with the rank; the S keyframe rows are random."""
    m = n - s
    q = 0.1 * torch.randn(b, h, n, d, generator=g)
    q[..., 0] = 1.0
    k = torch.randn(b, h, n, d, generator=g)
    ranks = torch.stack([(torch.randperm(m, generator=g) + 1) // 2 for _ in range(b)])
    k[:, :, s:, :] = 0.0  # equal rank = identical key row
    k[:, :, s:, 0] = torch.log1p(4.0 * ranks[:, None, :].float() / m)
    return q, k, ranks
