"""Domain-specific batch normalisation (DSBN) and STAR's partitioned normalisation.

One batch normalisation per domain (Chang et al., CVPR 2019; used by ADIN, Jiang et al. CIKM 2022):
the rows of domain ``k`` are normalised with domain ``k``'s own batch statistics in training and its
own running statistics in evaluation, so domains with very different activation scales do not
share (and blur) one set of moments. With ``shared_affine=True`` the affine transform is STAR's
"partitioned normalisation" (Sheng et al., CIKM 2021): ``gamma = gamma_shared * gamma_k`` and
``beta = beta_shared + beta_k``.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.fx.wrap  # a shape test: one node in an fx trace
def _check_input(x: torch.Tensor, num_features: int) -> None:
    if x.dim() != 2 or x.shape[1] != num_features:
        raise ValueError(f"DomainBatchNorm expects [B, {num_features}], got {tuple(x.shape)}")


@torch.fx.wrap  # one node in an fx trace, so that it reads the buffer when run, not when traced
def _moving_average_(running: torch.Tensor, update: torch.Tensor, batch: torch.Tensor, momentum: float) -> None:
    """In place: ``running = (1 - momentum) * running + momentum * batch`` where ``update`` is True."""
    running.copy_(torch.where(update, (1 - momentum) * running + momentum * batch, running))


class DomainBatchNorm(nn.Module):
    """Per-domain batch normalisation over features: x [B, F], domain [B] -> [B, F].

    For a row ``b`` of domain ``k = domain[b]``::

        y_b = gamma_k * (x_b - mu_k) / sqrt(var_k + eps) + beta_k

    Training: ``mu_k``, ``var_k`` are the mean and biased variance over the batch's rows of domain
    ``k``; domain ``k``'s running statistics move towards them with ``momentum`` (the running
    variance takes the unbiased variance, as :class:`torch.nn.BatchNorm1d` does) and only from
    domain ``k``'s rows. Evaluation: every row uses its own domain's running statistics.

    Choices where batch normalisation is undefined:
        * a domain absent from the batch: nothing is computed for it and its running statistics
          (and ``num_batches_tracked``) stay exactly as they were;
        * a domain with a single row in a training batch: a one-row variance is meaningless (and
          the unbiased one divides by 0), so that row is normalised with the domain's *running*
          statistics, as in evaluation, and the running statistics are not updated. The output is
          finite and its gradient flows only through the affine transform and ``x``.

    Statistics are computed in float32 (also under bf16 autocast); the output has ``x``'s dtype.
    Vectorised: per-domain sums by ``index_add``, no loop over rows or domains.

    Args:
        num_features: F.
        num_domains: K; ``domain`` values must lie in ``[0, K)``.
        eps: added to the variance.
        momentum: weight of the new batch statistic in the running average.
        shared_affine: STAR's partitioned normalisation (a shared gamma/beta combined with the
            per-domain ones) instead of per-domain gamma/beta alone.

    Parameters: ``weight``, ``bias`` [K, F] per domain (initialised 1 and 0); with
    ``shared_affine`` also ``shared_weight``, ``shared_bias`` [F]. Buffers: ``running_mean``,
    ``running_var`` [K, F], ``num_batches_tracked`` [K].
    """

    # buffers (registered in __init__)
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self, num_features: int, num_domains: int, eps: float = 1e-5, momentum: float = 0.1, shared_affine: bool = False
    ) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must lie in (0, 1], got {momentum}")
        self.num_features = num_features
        self.num_domains = num_domains
        self.eps = eps
        self.momentum = momentum
        self.shared_affine = shared_affine
        self.weight = nn.Parameter(torch.ones(num_domains, num_features))
        self.bias = nn.Parameter(torch.zeros(num_domains, num_features))
        if shared_affine:
            self.shared_weight = nn.Parameter(torch.ones(num_features))
            self.shared_bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_domains, num_features))
        self.register_buffer("running_var", torch.ones(num_domains, num_features))
        self.register_buffer("num_batches_tracked", torch.zeros(num_domains, dtype=torch.long))

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_domains={self.num_domains}, eps={self.eps}, "
            f"momentum={self.momentum}, shared_affine={self.shared_affine}"
        )

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-domain (gamma [K, F], beta [K, F]), partitioned when ``shared_affine``."""
        if self.shared_affine:
            return self.shared_weight * self.weight, self.shared_bias + self.bias
        return self.weight, self.bias

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.num_features)
        domain = domain.long()
        values = x.float()
        if self.training:
            mean, var = self._batch_statistics(values, domain)
        else:
            mean, var = self.running_mean[domain], self.running_var[domain]
        gamma, beta = self.affine()
        normalised = (values - mean) * torch.rsqrt(var + self.eps)
        return (normalised * gamma[domain] + beta[domain]).to(x.dtype)

    def _batch_statistics(self, values: torch.Tensor, domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row (mean, biased var) [B, F] of the row's domain; updates the running statistics."""
        num_domains, width = self.num_domains, self.num_features
        counts = torch.zeros(num_domains, device=values.device, dtype=values.dtype).index_add(
            0, domain, torch.ones_like(domain, dtype=values.dtype)
        )  # [K]
        sums = values.new_zeros(num_domains, width).index_add(0, domain, values)
        mean = sums / counts.clamp_min(1.0)[:, None]  # [K, F]
        centred = values - mean[domain]  # [B, F]
        squares = values.new_zeros(num_domains, width).index_add(0, domain, centred * centred)
        var = squares / counts.clamp_min(1.0)[:, None]  # biased, [K, F]
        has_statistics = counts >= 2  # [K]; 0 rows: absent, 1 row: use the running statistics
        row_has_statistics = has_statistics[domain][:, None]  # [B, 1]
        row_mean = torch.where(row_has_statistics, mean[domain], self.running_mean[domain])
        row_var = torch.where(row_has_statistics, var[domain], self.running_var[domain])
        with torch.no_grad():
            unbiased = squares / (counts - 1.0).clamp_min(1.0)[:, None]
            update = has_statistics[:, None]
            _moving_average_(self.running_mean, update, mean.detach(), self.momentum)
            _moving_average_(self.running_var, update, unbiased, self.momentum)
            self.num_batches_tracked.add_(has_statistics.long())
        return row_mean, row_var
