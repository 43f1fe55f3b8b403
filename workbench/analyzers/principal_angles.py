"""Principal angles between singular subspaces: Sahara's rotation measure (Zhou et al. 2025,
"On the Role of Attention Heads in Large Language Model Safety", arXiv:2410.13708)."""

from __future__ import annotations

import math

import torch

from workbench.analyzers.base import AnalyzerError


def top_singular_basis(matrix: torch.Tensor, rank: int = 1, space: str = "prompts"):
    """Orthonormal basis of the top-``rank`` singular subspace of ``matrix`` (N x d):
    left singular vectors (N x rank, ``space="prompts"``) or right ones (d x rank, "hidden")."""
    u, _, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    if space == "prompts":
        return u[:, :rank]
    if space == "hidden":
        return vh[:rank].T
    raise AnalyzerError(f"sahara_space must be 'prompts' or 'hidden', got {space!r}")


def principal_angle(a: torch.Tensor, b: torch.Tensor, rank: int = 1, space: str = "prompts"):
    """Largest principal angle, in degrees, between the top-``rank`` singular subspaces of the
    matrices ``a`` and ``b`` (both N x d): ``arccos`` of the smallest singular value of
    ``Ua^T Ub``. 0 = same subspace, 90 = orthogonal. Sahara's rotation measure (rank 1)."""
    ua = top_singular_basis(a, rank, space)
    ub = top_singular_basis(b, rank, space)
    s = torch.linalg.svdvals(ua.T @ ub)
    return math.degrees(math.acos(float(s.min().clamp(-1.0, 1.0))))
