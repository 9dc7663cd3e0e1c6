"""The multi-layer perceptron every model ends in (and most blocks hold)."""

from __future__ import annotations

from torch import nn


class MLP(nn.Sequential):
    """Linear -> activation (-> dropout) per hidden layer; ``out_features`` adds a final plain Linear.

    Shapes: [..., in_features] -> [..., hidden[-1] or out_features].

    Example::

        MLP(10, [8, 4], out_features=1)(torch.randn(2, 10)).shape  # (2, 1)
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int],
        out_features: int | None = None,
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        if out_features is not None:
            layers.append(nn.Linear(width, out_features))
            width = out_features
        super().__init__(*layers)
        self.out_features = width
