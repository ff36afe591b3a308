"""k-means in torch, shared by the codec's RVQ initialisation and the semantic tokenizer's units.

Two update rules, chosen by ``batch_size``:

- ``batch_size=None``: Lloyd's algorithm. Random rows as the first centroids, then ``iters`` full passes
  that set each centroid to the mean of its points. Used to initialise the RVQ codebooks
  (``ResidualVQ.kmeans_init``), where the sample is small and may hold fewer rows than codes.
- ``batch_size=int``: mini-batch k-means (Sculley, 2010). k-means++ seeding on a subsample, then
  ``iters`` passes of mini-batches where each centroid moves towards its points at a per-centroid rate
  ``1 / count``. Used for the semantic tokenizer's targets and units, fitted on millions of frames.

Randomness: Lloyd draws from torch's global generator (so a seeded training run repeats); the mini-batch
rule uses its own generator seeded by ``seed`` and leaves the global one untouched.
"""

from __future__ import annotations

import torch

from tokenlm.errors import TokenlmError


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid (squared L2) for each row of ``x [N, D]`` -> ``[N]`` int64."""
    c2 = (centroids**2).sum(1)
    # ||x||^2 is the same for every centroid, so it is left out of the distance
    out = [((-2.0 * xs @ centroids.T) + c2).argmin(1) for xs in x.split(chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def kmeans(x: torch.Tensor, k: int, iters: int = 10, *, batch_size: int | None = None, seed: int = 0) -> torch.Tensor:
    """Centroids ``[k, D]`` of ``x [N, D]``: Lloyd's algorithm (``batch_size=None``) or mini-batch k-means.

    Empty clusters are re-seeded from random rows, so every centroid is used. ``seed`` applies to the
    mini-batch rule only (Lloyd draws from torch's global generator).
    """
    if batch_size is None:
        return _lloyd(x, k, iters)
    return _minibatch(x, k, iters, batch_size, seed)


def _lloyd(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    N, D = x.shape
    centroids = x[torch.randperm(N, device=x.device)[:k]].clone()
    if N < k:  # fewer rows than codes: the rest start as jittered copies of random rows
        centroids = torch.cat([centroids, x[torch.randint(0, N, (k - N,))] + 1e-3 * torch.randn(k - N, D)])
    for _ in range(iters):
        assign = nearest(x, centroids)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = counts == 0
        centroids = torch.where(
            empty[:, None], x[torch.randint(0, N, (k,), device=x.device)], sums / counts.clamp_min(1)[:, None]
        )
    return centroids


def _minibatch(x: torch.Tensor, k: int, iters: int, batch_size: int, seed: int) -> torch.Tensor:
    N = x.shape[0]
    if N < k:
        raise TokenlmError(f"k-means needs at least {k} frames, got {N}")
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    c = _kmeans_pp(x[torch.randperm(N, generator=g)[: min(N, 20 * k)]], k, g)
    counts = torch.zeros(k)
    for _ in range(iters):
        hits = torch.zeros(k)
        for idx in torch.randperm(N, generator=g).split(batch_size):
            xb = x[idx]
            a = nearest(xb, c)
            n = torch.bincount(a, minlength=k).float()
            sums = torch.zeros_like(c).index_add_(0, a, xb)
            counts += n
            hits += n
            rate = (n / counts.clamp(min=1))[:, None]
            c = c + rate * (sums / n.clamp(min=1)[:, None] - c) * (n > 0)[:, None]
        dead = hits == 0
        if dead.any():
            c[dead] = x[torch.randint(N, (int(dead.sum()),), generator=g)]
            counts[dead] = 0
    return c


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): each next centroid drawn with probability ~ d^2."""
    c = [x[torch.randint(len(x), (1,), generator=g)].squeeze(0)]
    d2 = ((x - c[0]) ** 2).sum(1)
    for _ in range(1, k):
        i = torch.multinomial(d2 / d2.sum().clamp(min=1e-12) + 1e-12, 1, generator=g)
        c.append(x[i].squeeze(0))
        d2 = torch.minimum(d2, ((x - c[-1]) ** 2).sum(1))
    return torch.stack(c)
