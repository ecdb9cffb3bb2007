"""Point-cloud operations used on Gaussian centres: farthest point sampling and exact k-nearest neighbours.

Plain PyTorch (any device), exact and deterministic. Distances are sums of squared coordinate
differences, not ``|a|² + |b|² − 2ab``: the expanded formula rounds differently and can flip a
neighbour across the motion VAE's radius test. (``knn_points`` uses the expanded form only to
pre-select candidates, with an error bound that proves the exact result or falls back to brute force.)
"""

from __future__ import annotations

import torch

__all__ = ["farthest_point_sampling", "knn_points"]

# Working-set budget (bytes) of one chunk of the (B, m, N, 3) difference tensor in knn_points.
_KNN_CHUNK_BYTES = 256 * 1024 * 1024


def _check_lengths(lengths, B: int, N: int, device, name: str) -> torch.Tensor:
    if lengths is None:
        return torch.full((B,), N, dtype=torch.int64, device=device)
    lengths = torch.as_tensor(lengths, device=device).to(torch.int64).reshape(-1)
    if lengths.numel() != B:
        raise ValueError(f"{name} must have one entry per batch element ({B}), got {lengths.numel()}")
    if bool((lengths < 0).any()) or bool((lengths > N).any()):
        raise ValueError(f"{name} must lie in [0, {N}], got {lengths.tolist()}")
    return lengths


def farthest_point_sampling(
    points: torch.Tensor,
    k: int,
    lengths: torch.Tensor | None = None,
    start_idx: int | None = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Greedy farthest point sampling.

    Each step picks the point farthest (in squared Euclidean distance) from the already selected
    ones; ties go to the lowest index. Starting at index 0 reproduces the deterministic variant of
    ``torch_cluster.fps`` used by the parity fixtures.

    Args:
        points: (B, N, 3) point sets (rows past ``lengths[b]`` are padding and never chosen).
        k: number of samples per element (≤ every length).
        lengths: (B,) int valid counts; None = all N.
        start_idx: first selected index of every element; None draws it uniformly in
            ``[0, lengths[b])`` from ``generator``.
        generator: torch.Generator for the random start (CPU generator).
    Returns:
        (B, k) int64 indices into dim 1 of ``points``, in sampling order.
    """
    if points.ndim != 3:
        raise ValueError(f"points must have shape (B, N, D), got {tuple(points.shape)}")
    B, N, _ = points.shape
    device = points.device
    lengths = _check_lengths(lengths, B, N, device, "lengths")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if B and k > int(lengths.min()):
        raise ValueError(f"cannot sample k={k} points from a point set with only {int(lengths.min())} valid points")

    if start_idx is None:
        u = torch.rand(B, generator=generator, dtype=torch.float64)
        start = (u * lengths.cpu().to(torch.float64)).floor().to(torch.int64).clamp_max(lengths.cpu() - 1).to(device)
    else:
        start = torch.full((B,), int(start_idx), dtype=torch.int64, device=device)
        if bool((start < 0).any()) or bool((start >= lengths).any()):
            raise ValueError(f"start_idx={start_idx} is outside the valid points (lengths {lengths.tolist()})")

    pts = points.detach()
    valid = torch.arange(N, device=device)[None, :] < lengths[:, None]  # (B, N)
    # Padding gets -1 so that argmax never prefers it over a real point (distances are ≥ 0).
    min_dist = torch.where(valid, torch.full_like(pts[..., 0], float("inf")), torch.full_like(pts[..., 0], -1.0))
    idx = torch.empty(B, k, dtype=torch.int64, device=device)
    batch = torch.arange(B, device=device)
    current = start
    for i in range(k):
        idx[:, i] = current
        last = pts[batch, current]  # (B, 3)
        dist = ((pts - last[:, None, :]) ** 2).sum(-1)  # (B, N)
        min_dist = torch.minimum(min_dist, torch.where(valid, dist, min_dist))
        current = min_dist.argmax(dim=1)  # first maximum wins
    return idx


def _auto_chunk(B: int, N: int, D: int, itemsize: int) -> int:
    per_query = max(1, B * N * (D + 2) * itemsize)  # a (B, m, N, D) difference tensor dominates
    return max(1, _KNN_CHUNK_BYTES // per_query)


def _sq_dist(q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Σ(q − r)² over the last dim, broadcasting: the one distance formula of this module."""
    return ((q - r) ** 2).sum(-1)


def _topk_lowest_index_first(dist: torch.Tensor, idx: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest of ``dist`` (..., c) ordered by (distance, index); returns their ``idx``."""
    by_index = torch.argsort(idx, dim=-1)
    idx = torch.gather(idx, -1, by_index)
    dist = torch.gather(dist, -1, by_index)
    order = torch.sort(dist, dim=-1, stable=True).indices[..., :k]
    return torch.gather(idx, -1, order)


def _knn_chunk_exact(q: torch.Tensor, r: torch.Tensor, k: int, pad: torch.Tensor) -> torch.Tensor:
    """Brute force: all (B, m, N) distances, then the k smallest. The reference path."""
    dist = _sq_dist(q[:, :, None, :], r[:, None, :, :]).masked_fill(pad, float("inf"))  # (B, m, N)
    N = r.shape[1]
    if k < N:
        vals, cand = torch.topk(dist, k, dim=-1, largest=False, sorted=True)
        idx = _topk_lowest_index_first(vals, cand, k)
        # topk may cut equal distances straddling the k-th place arbitrarily: such rows are fully
        # sorted so that ties always go to the lower index.
        tied = (dist <= vals[..., -1:]).sum(-1) > k  # (B, m)
        if bool(tied.any()):
            b, i = tied.nonzero(as_tuple=True)
            idx[b, i] = torch.sort(dist[b, i], dim=-1, stable=True).indices[..., :k]
        return idx
    cand = torch.arange(N, device=r.device).expand_as(dist)
    return _topk_lowest_index_first(dist, cand, k)


def _knn_chunk_fast(q, r, k, pad, r_sq, r_sq_max, lengths) -> torch.Tensor:
    """Candidates from the matrix-product distance, exact re-ranking, and a certificate.

    The expanded distance |q|² + |r|² − 2 q·r is cheap (one batched GEMM) but rounded; its error is
    bounded by ``err``. Taking c > k candidates and re-ranking them with the exact formula gives the
    exact answer whenever the k-th exact distance is below the smallest distance any non-candidate
    can have (the c-th approximate distance minus the error); rows where that cannot be certified
    are recomputed by brute force.
    """
    B, m, D = q.shape
    N = r.shape[1]
    c = min(N, 2 * k + 8)
    q_sq = (q * q).sum(-1)  # (B, m)
    approx = torch.baddbmm(q_sq[:, :, None] + r_sq[:, None, :], q, r.transpose(1, 2), alpha=-2.0)
    approx = approx.masked_fill(pad, float("inf"))
    a_vals, cand = torch.topk(approx, c, dim=-1, largest=False, sorted=True)  # (B, m, c)
    nb = torch.gather(r, 1, cand.reshape(B, m * c, 1).expand(B, m * c, D)).reshape(B, m, c, D)
    exact = _sq_dist(q[:, :, None, :], nb)
    exact = exact.masked_fill(cand >= lengths[:, None, None], float("inf"))
    idx = _topk_lowest_index_first(exact, cand, k)
    kth = torch.sort(exact, dim=-1).values[..., k - 1]
    eps = torch.finfo(q.dtype).eps
    err = 8 * (D + 3) * eps * (q_sq + r_sq_max[:, None])  # generous bound on both roundings
    certified = kth < a_vals[..., -1] - 2 * err
    if not bool(certified.all()):
        bad = (~certified).nonzero(as_tuple=True)
        for b in bad[0].unique().tolist():
            rows = bad[1][bad[0] == b]
            idx[b, rows] = _knn_chunk_exact(q[b : b + 1, rows], r[b : b + 1], k, pad[b : b + 1])[0]
    return idx


def knn_points(
    query: torch.Tensor,
    ref: torch.Tensor,
    k: int,
    ref_lengths: torch.Tensor | None = None,
    chunk_size: int | None = None,
    exact_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-nearest neighbours of each query point among the reference points.

    Neighbour sets are selected with a certified fast path (GEMM distances for candidates, exact
    re-ranking, brute force wherever the certificate fails); ``exact_only=True`` runs the plain brute
    force reference instead. Both return the same neighbours.

    Args:
        query: (B, M, D) query points.
        ref: (B, N, D) reference points; rows past ``ref_lengths[b]`` are padding and never returned.
        k: neighbours per query (≤ every reference length).
        ref_lengths: (B,) int valid reference counts; None = all N.
        chunk_size: queries per chunk; None picks one that keeps the working set near 256 MB.
        exact_only: skip the fast path.
    Returns:
        sq_dists (B, M, k) squared distances Σ(q − r)², ascending (differentiable w.r.t. both inputs),
        idx (B, M, k) int64 indices into dim 1 of ``ref`` (equal distances: lower index first).
    """
    if query.ndim != 3 or ref.ndim != 3 or query.shape[0] != ref.shape[0] or query.shape[2] != ref.shape[2]:
        raise ValueError(f"query and ref must have shapes (B, M, D) and (B, N, D), got {tuple(query.shape)} and {tuple(ref.shape)}")
    if query.dtype != ref.dtype or not query.is_floating_point():
        raise ValueError(f"query and ref must share one floating dtype, got {query.dtype} and {ref.dtype}")
    B, M, D = query.shape
    N = ref.shape[1]
    k = int(k)
    ref_lengths = _check_lengths(ref_lengths, B, N, ref.device, "ref_lengths")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    if B and k > int(ref_lengths.min()):
        raise ValueError(f"k={k} exceeds the number of valid reference points ({int(ref_lengths.min())})")

    if chunk_size is None:
        chunk_size = _auto_chunk(B, N, D, ref.element_size())
    chunk_size = max(1, int(chunk_size))
    q = query.detach()
    r = ref.detach()
    pad = (torch.arange(N, device=ref.device)[None, :] >= ref_lengths[:, None])[:, None, :]  # (B, 1, N)
    use_fast = not exact_only and N > 2 * k + 8
    if use_fast:
        r_sq = (r * r).sum(-1)  # (B, N)
        r_sq_max = r_sq.masked_fill(pad[:, 0], 0.0).amax(-1)  # (B,)
    idx = torch.empty(B, M, k, dtype=torch.int64, device=query.device)
    for s in range(0, M, chunk_size):
        qc = q[:, s : s + chunk_size]  # (B, m, D)
        if use_fast:
            idx[:, s : s + chunk_size] = _knn_chunk_fast(qc, r, k, pad, r_sq, r_sq_max, ref_lengths)
        else:
            idx[:, s : s + chunk_size] = _knn_chunk_exact(qc, r, k, pad)
    # Recompute the selected distances with the same formula, now with autograd.
    nb = torch.gather(ref, 1, idx.reshape(B, M * k, 1).expand(B, M * k, D)).reshape(B, M, k, D)
    return _sq_dist(query[:, :, None, :], nb), idx
