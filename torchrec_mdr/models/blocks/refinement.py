"""Context-aware feature refinement (FRNet; Wang et al., SIGIR 2022, "Enhancing CTR Prediction with
Context-Aware Feature Representation Learning"): re-code every field vector from the whole instance,
so the same feature gets a different representation in a different context. It takes field vectors
and returns field vectors of the same shape, so it can sit between any model's embeddings and its
interaction or DNN part.

Shapes (B rows, K fields, D the field width, d_k the attention width):

    E                                                              [B, K, D]   field vectors
    Information Extraction Unit, IEU(E):
      Q, K, V = E W^Q, E W^K, E W^V                                [B, K, d_k] (self-attention unit)
      O_vec = softmax(Q K^T) V W^P                                 [B, K, D]
      h_0 = flatten(E);  h_{l+1} = PReLU(W_l h_l + b_l)            [B, K*D] -> [B, H_l]
      O_bit = PReLU(W_L h_L + b_L)                                 [B, D]      (contextual information
                                                                                extractor, CIE)
      O_IEU = O_vec ⊙ O_bit  (O_bit broadcast over the K fields)   [B, K, D]   (integration unit)
    E_g = IEU_G(E)                                                 [B, K, D]   complementary features
    W_b = IEU_W(E)                                                 [B, K, D] ('bit') or [B, K, 1]
                                                                               ('vector': O_IEU summed over D)
    E_r = E ⊙ σ(W_b) + E_g ⊙ (1 − σ(W_b))                          [B, K, D]   (Complementary Selection Gate)

The two IEUs have the same structure and their own parameters.

Choices where the paper is silent or where the authors' code departs from it (each tested in
tests/test_frnet.py):

* **Gate orientation**: as the paper writes it, σ(W_b) weighs the original E and 1 − σ(W_b) the
  complementary E_g (the authors' code agrees). Writing the gate the other way round,
  E_g ⊙ W + E ⊙ (1 − W), is the same family of functions: 1 − σ(x) = σ(−x), and −W_b is reached by
  negating W^V.
* **Attention**: no 1/sqrt(d_k) scaling (the paper's softmax(Q K^T) has none, nor has the authors'
  code); W^Q, W^K, W^V, W^P are bias-free, as the paper writes them (the authors' code gives them
  biases); one head.
* **CIE**: Linear -> PReLU per layer, as the paper's equations (the authors' code adds BatchNorm and
  dropout 0.5 after each hidden layer, and a ReLU instead of PReLU on O_bit); one PReLU slope per layer,
  initialised at 0.25 (PyTorch's default). ``cie_hidden = []`` maps flatten(E) to O_bit directly.
* **Defaults** (the authors' code): one CIE hidden layer of 256, attention width d_k = 10, bit-level
  weights.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from torchrec_mdr.models.blocks.mlp import MLP

WeightType = Literal["bit", "vector"]
WEIGHT_TYPES: tuple[str, ...] = ("bit", "vector")


class FieldSelfAttention(nn.Module):
    """IEU's self-attention unit: ``O_vec = softmax(Q K^T) V W^P`` over the K fields of each row.

    Shapes: [B, K, D] -> [B, K, D].
    """

    def __init__(self, dim: int, attention_size: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, attention_size, bias=False)
        self.key = nn.Linear(dim, attention_size, bias=False)
        self.value = nn.Linear(dim, attention_size, bias=False)
        self.projection = nn.Linear(attention_size, dim, bias=False)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        scores = torch.bmm(self.query(vectors), self.key(vectors).transpose(1, 2))  # [B, K, K]
        return self.projection(torch.bmm(scores.softmax(dim=-1), self.value(vectors)))


class InformationExtractionUnit(nn.Module):
    """IEU: the self-attention unit's O_vec times the contextual information extractor's O_bit.

    ``weight_type = "vector"`` sums the product over D (one weight per field, the paper's vector-level
    variant of IEU_W).

    Shapes: [B, K, D] -> [B, K, D] ('bit') or [B, K, 1] ('vector').
    """

    def __init__(
        self, num_fields: int, dim: int, attention_size: int, cie_hidden: list[int], weight_type: WeightType = "bit"
    ) -> None:
        super().__init__()
        if weight_type not in WEIGHT_TYPES:
            raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
        self.vector_sum = weight_type == "vector"
        self.attention = FieldSelfAttention(dim, attention_size)
        self.context = MLP(num_fields * dim, [*cie_hidden, dim], activation=nn.PReLU)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        out = self.attention(vectors) * self.context(vectors.flatten(1)).unsqueeze(1)
        return out.sum(dim=2, keepdim=True) if self.vector_sum else out


class FeatureRefinement(nn.Module):
    """FRNet: two IEUs and the Complementary Selection Gate, ``E_r = E ⊙ σ(W_b) + E_g ⊙ (1 − σ(W_b))``.

    Shapes: [B, num_fields, dim] -> [B, num_fields, dim].

    Example::

        refine = FeatureRefinement(num_fields=6, dim=16)
        refine(torch.randn(32, 6, 16)).shape  # (32, 6, 16)
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        attention_size: int = 10,
        cie_hidden: list[int] | None = None,
        weight_type: WeightType = "bit",
    ) -> None:
        super().__init__()
        hidden = [256] if cie_hidden is None else list(cie_hidden)
        self.ieu_g = InformationExtractionUnit(num_fields, dim, attention_size, hidden)  # complementary features
        self.ieu_w = InformationExtractionUnit(num_fields, dim, attention_size, hidden, weight_type)  # gate weights

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.ieu_w(vectors))
        return vectors * gate + self.ieu_g(vectors) * (1 - gate)
