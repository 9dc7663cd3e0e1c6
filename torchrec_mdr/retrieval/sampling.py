"""Streaming estimate of how often each item is sampled, for the log-Q correction of in-batch softmax.

Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations"
(RecSys 2019), Algorithm 2: two hashed arrays, ``A[h]`` the last step at which an item of bucket
``h`` was seen and ``B[h]`` the estimated number of steps between two sightings. At step ``t``
(counted from 1), for every item ``y`` of the batch with ``h = hash(y)``::

    B[h] <- (1 - alpha) * B[h] + alpha * (t - A[h])
    A[h] <- t

and the item's estimated sampling probability is ``q(y) = 1 / B[h]``: the probability that the item
appears in one step's batch (for an item that is a share ``p`` of the rows and a batch of ``n``
rows, ``1 - (1 - p)^n``, ~ ``n p`` for rare items; the constant factor cancels in the softmax).

Choices (each tested in tests/test_retrieval.py):
    * hash: ``h = id mod buckets`` (ids are non-negative int64; dense ids below ``buckets`` never
      collide; colliding items share, and so over-estimate, one probability);
    * several occurrences of one item (or bucket) in one step count once: all reads happen before
      the writes, so duplicates compute identical values and write them together (no gap-0
      updates, no device sync for a ``unique``);
    * the first sighting (``A[h] = 0``) sets ``B[h] = t`` (the gap since the stream began) instead of
      the paper's ``alpha * t`` from ``B = 0``, which would overstate the probability for the
      first ~``1 / alpha`` sightings;
    * ``B`` is clamped to at least 1, so ``q <= 1`` and ``log q <= 0``.

The arrays are buffers: checkpointed with the model, identical on every rank when every rank
updates them with the same (all-gathered) stream, see :class:`~torchrec_mdr.retrieval.model.RetrievalDenseArch`.
"""

from __future__ import annotations

import torch
from torch import nn


class StreamingFrequencyEstimator(nn.Module):
    """Hashed last-seen step ``A`` and gap estimate ``B`` (see the module docstring).

    Buffers: ``last_seen`` [buckets] int64 (``A``), ``gap`` [buckets] float32 (``B``), ``step``
    scalar int64 (``t``, the number of updates so far).
    """

    # buffers (registered in __init__)
    last_seen: torch.Tensor
    gap: torch.Tensor
    step: torch.Tensor

    def __init__(self, buckets: int, alpha: float) -> None:
        super().__init__()
        if buckets < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"need buckets >= 1 and 0 < alpha <= 1, got {buckets}, {alpha}")
        self.buckets = buckets
        self.alpha = alpha
        # one spare bucket at index `buckets` absorbs the rows that are not items of the stream
        self.register_buffer("last_seen", torch.zeros(buckets + 1, dtype=torch.int64))
        self.register_buffer("gap", torch.zeros(buckets + 1, dtype=torch.float32))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"buckets={self.buckets}, alpha={self.alpha}"

    def bucket(self, ids: torch.Tensor) -> torch.Tensor:
        """[N] int64 ids -> [N] bucket indices in [0, buckets)."""
        return torch.remainder(ids.long(), self.buckets)

    @torch.no_grad()
    def update(self, ids: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """One step of the stream: the items ``ids`` [N] (those with ``valid`` [N] bool, default all)."""
        self.step.add_(1)
        buckets = self.bucket(ids)
        if valid is not None:
            buckets = torch.where(valid, buckets, torch.full_like(buckets, self.buckets))
        t = self.step
        last = self.last_seen[buckets]
        elapsed = (t - last).to(self.gap.dtype)
        moved = (1.0 - self.alpha) * self.gap[buckets] + self.alpha * elapsed
        new_gap = torch.where(last == 0, elapsed, moved).clamp_min(1.0)
        self.gap.index_put_((buckets,), new_gap)
        self.last_seen.index_put_((buckets,), t.expand_as(buckets))
        self.gap[self.buckets] = 0.0  # the spare bucket keeps no state
        self.last_seen[self.buckets] = 0

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """[N] ids -> [N] float32 estimated probability that the item appears in one step (1 if never seen)."""
        return 1.0 / self.gap[self.bucket(ids)].clamp_min(1.0)

    def log_probability(self, ids: torch.Tensor) -> torch.Tensor:
        """[N] ids -> [N] ``log q`` (<= 0)."""
        return -torch.log(self.gap[self.bucket(ids)].clamp_min(1.0))
