"""AESM² (Zou et al., SIGIR 2022, "Automatic Expert Selection for Multi-Scenario and Multi-Task
Search"): multi-task layers stacked over multi-scenario layers; in every layer each input picks its
own scenario-/task-specific experts and its shared experts from the gates' scores.

One expert-selection layer with E experts and G gates (G = the number of scenarios in a
multi-scenario layer, of tasks in a multi-task layer); a row's *owner* o is its scenario (task)::

    experts  E_k(x)                                                        [N, E, H]
    gates    g_j = W_j [x ⊕ c] + b_j,  j = 1..G                             [N, G, E]   c: the condition
    noise    ĝ = g + noise_scale · E · ε,  ε ~ N(0, 1)  (training only)
    P        P[:, k] = softmax_j(ĝ[:, k])   expert k's distribution over the gates
    KL_sp,k  = KL(onehot(o) || P[:, k]) = −log P[o, k]                      specific score
    KL_sh,k  = KL(uniform || P[:, k])   = −log G − (1/G) Σ_j log P[j, k]    shared score
    S_sp     = the specific_top_k experts of smallest KL_sp; S_sh likewise with KL_sh
    w        = softmax_k(g_o masked to S_sp ∪ S_sh)  (unselected experts: weight exactly 0)
    out      = Σ_k w_k E_k(x)
    L_sp     = mean over rows and S_sp of KL_sp;  L_sh likewise over S_sh

The model (T tasks, K domains)::

    x^0 = FlatInput(features);  s = e_domain ⊕ [e_f for f in scenario_features]     scenario indicator
    x^l = ScenarioLayer_l(x^{l−1}, c = s, o = domain)                          l = 1..scenario_layers
    h_t^0 = x^L;  h_t^m = TaskLayer_m(h_t^{m−1}, c = s ⊕ e_t, o = t)             m = 1..task_layers
    logit_t = Tower_t(h_t^M)
    auxiliary loss = specific_loss_weight · Σ_layers L_sp + shared_loss_weight · Σ_layers L_sh

Sources: the paper's abstract (multi-task layers over multi-scenario layers; per layer, automatic
selection of specific and shared experts per input) and a public TensorFlow implementation of it
(``select_experts``: softmax of the noisy gate matrix over the gates, KL to the one-hot owner and to
the uniform distribution, top-K selection of each, the mean KL of the selected experts as the
auxiliary terms, the selected owner's gate re-normalised over the selected experts). The paper's
method section was not read directly.

Choices where the sources are silent or where this library differs (each tested in
tests/test_aesm2.py and tests/test_baselines.py):

* **Scenario tree.** The paper allows a hierarchy of scenario levels, each with its own layers. The
  dataset here has one scenario level, the domain: the multi-scenario layers' owner is the domain.
  ``scenario_features`` (domain-side id fields, none by default) only widen the scenario indicator
  s (they have no one-hot over which to select).
* **Masking.** Unselected experts get a gate logit of −∞ (weight exactly 0); an expert selected
  both as specific and as shared counts once. (The implementation multiplies the logits by a mask
  of 1, 2 or −10⁹, which for a negative logit would favour an unselected expert.)
* **KL.** Computed exactly from the log-softmax (0 · log 0 = 0); the implementation adds 1e-9 to
  both distributions.
* **Noise.** Only the selection and the KL terms see the noisy gates; the mixing weights use the
  clean ones (as in the implementation). Its scale grows with the expert count (noise_scale · E).
* **One gate.** A layer with one gate (one domain, or one task) has nothing to tell apart (every
  KL is 0): it mixes all its experts with a plain softmax gate and adds no auxiliary term.
* **Task layers.** The experts and the T gates of a multi-task layer are shared by the tasks, each
  task running them on its own input with its own condition s ⊕ e_t (e_t a learned task embedding
  of width D), as in the implementation; every task has its own tower (MLP, one logit).
* **Experts and gates** are ReLU MLPs (``expert_hidden``) and linear maps with a bias (no batch
  normalisation). Inputs: the baselines' flat input (id fields, domain-id embedding, dense, each
  sequence group mean-pooled); s reuses the input's domain-id embedding table.
* **Auxiliary loss.** Summed over the layers; in a multi-task layer the mean runs over rows and
  tasks together (one term per layer, not per task).
* **Auxiliary weights** (0.1 each), noise_scale (0.01), expert counts and top-K are our defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from torchrec_mdr.config import ConfigError, bounds, doc
from torchrec_mdr.models.blocks import FlatInput, StackedLinear, StackedMLP, select_domain
from torchrec_mdr.models.features import ArchOutput, EmbeddedFeatures, FeatureLayout


@dataclass
class AESM2Config:
    scenario_layers: int = field(default=1, metadata=bounds(ge=0, help="multi-scenario layers (domain gates)"))
    task_layers: int = field(default=1, metadata=bounds(ge=0, help="multi-task layers stacked on top (task gates)"))
    scenario_experts: int = field(default=6, metadata=bounds(ge=1, help="experts per multi-scenario layer"))
    task_experts: int = field(default=4, metadata=bounds(ge=1, help="experts per multi-task layer"))
    scenario_specific_top_k: int = field(
        default=2,
        metadata=bounds(
            ge=1, help="scenario-specific experts selected per row (smallest KL to the row's one-hot domain)"
        ),
    )
    scenario_shared_top_k: int = field(
        default=2,
        metadata=bounds(
            ge=1, help="shared experts selected per row in a multi-scenario layer (smallest KL to uniform)"
        ),
    )
    task_specific_top_k: int = field(default=1, metadata=bounds(ge=1, help="task-specific experts per row and task"))
    task_shared_top_k: int = field(default=1, metadata=bounds(ge=1, help="shared experts per row and task"))
    expert_hidden: list[int] = field(
        default_factory=lambda: [128],
        metadata=bounds(ge=1, help="widths of each expert MLP (every layer; the last is the layer's output width)"),
    )
    tower_hidden: list[int] = field(
        default_factory=lambda: [64], metadata=bounds(ge=1, help="hidden widths of each task's tower")
    )
    noise_scale: float = field(
        default=0.01,
        metadata=bounds(ge=0, help="training noise on the gates that select: std = noise_scale * experts (0 = none)"),
    )
    specific_loss_weight: float = field(
        default=0.1,
        metadata=bounds(ge=0, help="weight of the selected specific experts' KL to the one-hot owner (auxiliary loss)"),
    )
    shared_loss_weight: float = field(
        default=0.1,
        metadata=bounds(
            ge=0, help="weight of the selected shared experts' KL to the uniform distribution (auxiliary loss)"
        ),
    )
    scenario_features: list[str] = field(
        default_factory=list,
        metadata=doc("id fields whose embeddings join the domain-id embedding in the scenario indicator (gate input)"),
    )
    dropout: float = field(default=0.0, metadata=bounds(ge=0, lt=1, help="dropout after each hidden layer"))


class ExpertSelection(NamedTuple):
    """Which experts a row uses, and the KL scores of those selected.

    Attributes:
        mask: [N, E] bool, True at the selected (specific or shared) experts.
        specific_kl: [N, specific_top_k] KL(onehot(owner) || P[:, k]) of the selected specific experts.
        shared_kl: [N, shared_top_k] KL(uniform || P[:, k]) of the selected shared experts.
    """

    mask: torch.Tensor
    specific_kl: torch.Tensor
    shared_kl: torch.Tensor


def select_experts(
    gate_logits: torch.Tensor, owner: torch.Tensor, specific_top_k: int, shared_top_k: int
) -> ExpertSelection:
    """AESM²'s expert selection (see the module doc): softmax over the gates, KL scores, top-K of each.

    Shapes: gate_logits [N, G, E], owner [N] (0..G-1) -> :class:`ExpertSelection`.
    """
    log_p = torch.log_softmax(gate_logits, dim=1)  # log P[n, j, k]: expert k's distribution over the gates
    specific = -select_domain(log_p, owner)  # -log P[o, k] [N, E]
    shared = -log_p.mean(dim=1) - math.log(gate_logits.shape[1])
    specific_negative, specific_index = torch.topk(-specific, specific_top_k, dim=1)
    shared_negative, shared_index = torch.topk(-shared, shared_top_k, dim=1)
    mask = torch.zeros_like(specific, dtype=torch.bool)
    mask = mask.scatter(1, specific_index, True).scatter(1, shared_index, True)
    return ExpertSelection(mask, -specific_negative, -shared_negative)


class ExpertSelectionLayer(nn.Module):
    """One multi-scenario or multi-task layer: E experts, G gates, automatic expert selection.

    Shapes: x [N, in], condition [N, c], owner [N] (the row's gate, 0..G-1) ->
    (out [N, H], specific KL scalar, shared KL scalar) with H = ``hidden[-1]``.
    """

    def __init__(
        self,
        in_features: int,
        condition_width: int,
        hidden: list[int],
        num_experts: int,
        num_gates: int,
        specific_top_k: int,
        shared_top_k: int,
        noise_scale: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.experts = StackedMLP(num_experts, in_features, hidden, dropout=dropout)
        self.gates = StackedLinear(num_gates, in_features + condition_width, num_experts)
        self.num_gates, self.specific_top_k, self.shared_top_k = num_gates, specific_top_k, shared_top_k
        self.noise_std = noise_scale * num_experts
        self.out_features = self.experts.out_features

    def forward(
        self, x: torch.Tensor, condition: torch.Tensor, owner: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        experts = self.experts(x)  # [N, E, H]
        logits = self.gates(torch.cat([x, condition], dim=1))  # [N, G, E]
        own = select_domain(logits, owner)  # g_o [N, E]: only the owner's gate mixes (and learns from this path)
        if self.num_gates == 1:  # nothing to tell apart: a plain softmax gate, no auxiliary term
            zero = own.new_zeros(())
            return torch.einsum("ne,neh->nh", torch.softmax(own, dim=1), experts), zero, zero
        noisy = logits
        if self.training and self.noise_std > 0:
            noisy = logits + self.noise_std * torch.randn_like(logits)
        selection = select_experts(noisy, owner, self.specific_top_k, self.shared_top_k)
        weights = torch.softmax(own.masked_fill(~selection.mask, float("-inf")), dim=1)
        out = torch.einsum("ne,neh->nh", weights, experts)
        return out, selection.specific_kl.mean(), selection.shared_kl.mean()


class AESM2Arch(nn.Module):
    """FlatInput -> multi-scenario layers (domain gates) -> multi-task layers (task gates) -> a tower per task.

    Shapes: EmbeddedFeatures -> logits [B, num_tasks]; in training ``ArchOutput(logits, auxiliary loss)``.
    """

    # buffers (registered in __init__)
    task_ids: torch.Tensor

    def __init__(self, layout: FeatureLayout, config: AESM2Config) -> None:
        super().__init__()
        if not config.expert_hidden:
            raise ConfigError("model.aesm2.expert_hidden: needs at least one layer width (an expert is an MLP)")
        for kind in ("scenario", "task"):
            experts = getattr(config, f"{kind}_experts")
            for which in ("specific", "shared"):
                if getattr(config, f"{kind}_{which}_top_k") > experts:
                    raise ConfigError(
                        f"model.aesm2.{kind}_{which}_top_k: {getattr(config, f'{kind}_{which}_top_k')} "
                        f"is more than {kind}_experts = {experts}"
                    )
        self.config = config
        self.scenario_index = layout.field_indices(
            config.scenario_features, "model.aesm2.scenario_features", unique=True
        )
        dim, self.num_tasks = layout.embedding_dim, layout.num_tasks
        self.input = FlatInput(layout)
        indicator = dim * (1 + len(self.scenario_index))
        width = self.input.width
        scenario_layers = []
        for _ in range(config.scenario_layers):
            scenario_layers.append(
                ExpertSelectionLayer(
                    width,
                    indicator,
                    config.expert_hidden,
                    config.scenario_experts,
                    layout.num_domains,
                    config.scenario_specific_top_k,
                    config.scenario_shared_top_k,
                    config.noise_scale,
                    config.dropout,
                )
            )
            width = scenario_layers[-1].out_features
        self.scenario_layers = nn.ModuleList(scenario_layers)
        task_layers = []
        for _ in range(config.task_layers):
            task_layers.append(
                ExpertSelectionLayer(
                    width,
                    indicator + dim,
                    config.expert_hidden,
                    config.task_experts,
                    layout.num_tasks,
                    config.task_specific_top_k,
                    config.task_shared_top_k,
                    config.noise_scale,
                    config.dropout,
                )
            )
            width = task_layers[-1].out_features
        self.task_layers = nn.ModuleList(task_layers)
        self.task_embedding = nn.Embedding(layout.num_tasks, dim) if task_layers else None
        self.register_buffer("task_ids", torch.arange(layout.num_tasks), persistent=False)
        self.towers = StackedMLP(layout.num_tasks, width, config.tower_hidden, 1, config.dropout)

    def indicator(self, features: EmbeddedFeatures) -> torch.Tensor:
        """s [B, D (1 + len(scenario_features))]: the domain-id embedding and the named fields' embeddings."""
        parts = [self.input.domain_embedding(features.domain)]
        if self.scenario_index:
            parts.append(features.fields[:, self.scenario_index].flatten(1))
        return torch.cat(parts, dim=1)

    def forward(self, features: EmbeddedFeatures) -> torch.Tensor | ArchOutput:
        x, s = self.input(features), self.indicator(features)
        specific, shared = x.new_zeros(()), x.new_zeros(())
        for layer in self.scenario_layers:
            x, specific_kl, shared_kl = layer(x, s, features.domain)
            specific, shared = specific + specific_kl, shared + shared_kl
        # every task's path as its own row: row b * T + t is (row b, task t)
        tasks = (torch.zeros_like(x[:, :1], dtype=torch.long) + self.task_ids).reshape(-1)  # [B * T]
        h = x.repeat_interleave(self.num_tasks, dim=0)
        if self.task_embedding is not None:
            condition = torch.cat([s.repeat_interleave(self.num_tasks, dim=0), self.task_embedding(tasks)], dim=1)
            for layer in self.task_layers:
                h, specific_kl, shared_kl = layer(h, condition, tasks)
                specific, shared = specific + specific_kl, shared + shared_kl
        logits = self.towers(h.view(-1, self.num_tasks, h.shape[1])).squeeze(2)  # Tower_t(h_t) [B, T]
        if not self.training:
            return logits
        auxiliary = self.config.specific_loss_weight * specific + self.config.shared_loss_weight * shared
        return ArchOutput(logits, auxiliary)
