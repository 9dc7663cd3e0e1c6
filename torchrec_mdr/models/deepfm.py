"""DeepFM (Guo et al., IJCAI 2017, "DeepFM: A Factorization-Machine based Neural Network for CTR
Prediction"): a factorization machine and a DNN that share the same field embeddings.

    V = [e_1, ..., e_N, e_domain, s_1, ..., s_S, W_d dense + b_d]    K field vectors [B, K, D]
    y_FM  = w · flatten(V) + b + sum_{i<j} <V_i, V_j>                  first + second order (eq. 2)
          with sum_{i<j} <V_i, V_j> = 0.5 * sum_d ((sum_k V_kd)^2 - sum_k V_kd^2)
    y_DNN = MLP(flatten(V))                                             (eqs. 3-5)
    logit = y_FM + y_DNN                                                (eq. 1, before the sigmoid)

How this library's inputs enter (the paper has only categorical fields; each choice is tested in
tests/test_deepfm.py and tests/test_baselines.py):

The field vectors are the toolkit's :class:`~torchrec_mdr.models.blocks.FieldVectors` (shared with FRNet).

* **Id fields**: one field each (multi-valued ones sum-pooled, as for every model).
* **Domain**: the domain-id embedding is one more field, so the FM pairs the domain with every
  feature (domain x feature interactions) and the DNN sees it.
* **Sequences**: each sequence column of a group (``hist_item_id``, ``hist_domain``, ...) is
  mean-pooled over the real positions and becomes one field (an empty sequence gives a zero vector,
  which adds nothing to the FM).
* **Dense features**: one field, ``W_d dense + b_d`` (a linear layer to the embedding width, as
  DLRM's dense arch does); no field when the dataset has no dense feature.
* **First order**: the paper's per-feature scalar ``w_i`` needs a one-wide table per feature; the
  tables here are D wide, so the first-order term is a linear map of the field vectors
  (``w_i = <u_field, e_i>``: the scalar weight factorised through the shared embedding).
* **Several tasks**: the first-order term and the DNN give one logit per task; the second-order
  term is shared by the tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from torchrec_mdr.config import bounds
from torchrec_mdr.models.blocks import MLP, FieldVectors
from torchrec_mdr.models.features import EmbeddedFeatures, FeatureLayout


@dataclass
class DeepFMConfig:
    hidden: list[int] = field(default_factory=lambda: [256, 128, 64], metadata=bounds(ge=1, help="DNN widths"))
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden DNN layer"))


def fm_second_order(vectors: torch.Tensor) -> torch.Tensor:
    """The FM's pairwise interactions ``sum_{i<j} <v_i, v_j>`` in O(K D) (Rendle 2010, lemma 3.1).

    Shapes: [B, K, D] -> [B, 1].
    """
    square_of_sum = vectors.sum(dim=1).pow(2)
    sum_of_squares = vectors.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1, keepdim=True)


class DeepFMArch(nn.Module):
    """Field vectors -> first order + FM second order + DNN -> logits.

    Shapes: EmbeddedFeatures -> [B, num_tasks].
    """

    def __init__(self, layout: FeatureLayout, config: DeepFMConfig) -> None:
        super().__init__()
        self.input = FieldVectors(layout)
        self.num_fields = self.input.num_fields
        dim = layout.embedding_dim
        self.first_order = nn.Linear(self.num_fields * dim, layout.num_tasks)
        self.dnn = MLP(self.num_fields * dim, config.hidden, out_features=layout.num_tasks, dropout=config.dropout)

    def field_vectors(self, features: EmbeddedFeatures) -> torch.Tensor:
        """V [B, K, D]: id fields, domain, each sequence column mean-pooled, dense (:class:`FieldVectors`)."""
        return self.input(features)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor:
        vectors = self.field_vectors(features)
        flat = vectors.flatten(1)
        return self.first_order(flat) + fm_second_order(vectors) + self.dnn(flat)
