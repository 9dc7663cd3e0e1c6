"""ADIN's two-tower retrieval form: user tower, item tower, in-batch sampled softmax with log-Q correction.

ADIN (Jiang et al., CIKM 2022) is a recall-stage model. Its user tower is domain-adaptive; the item
tower is shared by all domains (one item corpus):

    user side: user id fields [B, Nu, D] --DomainInterestLayer (SE block, domain-specific excitation)-->
               flatten  ⊕  masked-mean pooled sequences  ⊕  domain embedding  (⊕ user dense)
               --SharedAndDomainNetwork (shared + row's domain network, DSBN)--> Linear --L2--> u [B, E]
    item side: item id fields [B, Ni, D] flatten (⊕ item dense) --MLP--> Linear --L2--> v [B, E]

Choices made where a two-tower form of the paper leaves room (tested in tests/test_retrieval.py):
    * training examples are the positive rows (first label == 1) of each batch; the negatives of a
      positive are the other positives' items of the same batch (in-batch sampled softmax);
    * the sequences are mean-pooled over their real positions: DIN target attention needs the
      candidate, which a two-tower model cannot show the user tower;
    * the split of features: ``retrieval.item_fields`` (default: the sequence groups' candidate
      fields) go to the item tower, every other id feature to the user tower; dense features go
      nowhere unless ``retrieval.user_dense`` / ``retrieval.item_dense`` name them (a row's dense
      features often describe the candidate, which must not leak into the user vector); the domain
      enters the user tower only (the item corpus is shared across domains);
    * ADIN's self-training (pseudo-labels from the other domains' CTR heads) has no counterpart in
      a two-tower model with one user vector per (row, domain) and is left out.

The forward is shaped like :class:`~torchrec_mdr.models.ranking.RankingModel` for
TrainPipelineSparseDist: the sharded collections are called at the top on batch attributes, and
everything after them (towers, loss, frequency estimate) lives in one leaf module,
:class:`RetrievalDenseArch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from torchrec_mdr.config import ConfigError
from torchrec_mdr.data.batch import Batch
from torchrec_mdr.data.spec import DatasetSpec
from torchrec_mdr.models.adin import DomainInterestLayer, SharedAndDomainNetwork
from torchrec_mdr.models.blocks import MLP, masked_mean
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, embed_features
from torchrec_mdr.retrieval.config import RetrievalConfig
from torchrec_mdr.retrieval.sampling import StreamingFrequencyEstimator
from torchrec_mdr.sparse.arch import SparseArch

if TYPE_CHECKING:
    from torchrec_mdr.sparse.mch.config import EvictionConfig


# --------------------------------------------------------------------------- features of each tower


@dataclass(frozen=True)
class TowerFeatures:
    """Which features each tower reads, resolved against the dataset (indices into the layout's order)."""

    user_fields: tuple[int, ...]  # into FeatureLayout.fields
    item_fields: tuple[int, ...]
    item_key: str  # the id feature identifying an item
    item_key_pooled: bool  # it comes in Batch.sparse_features (else in Batch.sequence_features)
    user_dense: tuple[int, ...]  # into the spec's dense features
    item_dense: tuple[int, ...]

    @staticmethod
    def resolve(spec: DatasetSpec, layout: FeatureLayout, config: RetrievalConfig) -> "TowerFeatures":
        """Check ``config``'s names against the dataset; ConfigError naming the key otherwise."""
        ids = list(layout.fields)
        if config.item_fields is None:
            item_fields = list(dict.fromkeys(f for s in layout.sequences for f in s.candidate_fields))
            if not item_fields:
                raise ConfigError(
                    f"retrieval.item_fields: the dataset has no sequence group with a candidate "
                    f"field to default to; name the item tower's id features (id features: {ids})"
                )
        else:
            item_fields = list(config.item_fields)
        unknown = [name for name in item_fields if name not in ids]
        if unknown:
            raise ConfigError(
                f"retrieval.item_fields: {unknown[0]!r} is not an id feature of the dataset; id features: {ids}"
            )
        single = [c.name for c in spec.columns_of("id")]
        item_key = config.item_key if config.item_key is not None else item_fields[0]
        if item_key not in item_fields:
            raise ConfigError(f"retrieval.item_key: {item_key!r} is not one of retrieval.item_fields {item_fields}")
        if item_key not in single:
            raise ConfigError(
                f"retrieval.item_key: {item_key!r} must be a single-valued id feature "
                f"(one of {[n for n in single if n in item_fields]})"
            )
        dense = list(spec.dense_features)
        return TowerFeatures(
            user_fields=tuple(i for i, name in enumerate(ids) if name not in item_fields),
            item_fields=tuple(ids.index(name) for name in item_fields),
            item_key=item_key,
            item_key_pooled=item_key in layout.pooled,
            user_dense=_dense_indices(config.user_dense, dense, "retrieval.user_dense"),
            item_dense=_dense_indices(config.item_dense, dense, "retrieval.item_dense"),
        )


def _dense_indices(choice: bool | list[str], dense: list[str], key: str) -> tuple[int, ...]:
    if choice is True:
        return tuple(range(len(dense)))
    if choice is False:
        return ()
    unknown = [name for name in choice if name not in dense]
    if unknown:
        raise ConfigError(f"{key}: {unknown[0]!r} is not a dense feature of the dataset; dense features: {dense}")
    return tuple(dense.index(name) for name in choice)


# --------------------------------------------------------------------------- towers


class UserInput(nn.Module):
    """The user tower's input: [user fields (SE re-weighted), domain embedding, user dense, pooled sequences].

    ``interest``: ADIN's :class:`~torchrec_mdr.models.adin.DomainInterestLayer` over the user fields,
    or None (no re-weighting). Sequences are mean-pooled over their real positions (no target
    attention: the user tower never sees the candidate).

    Shapes: user fields [B, Nu, D], sequences, user dense [B, Du], domain [B] -> [B, width] with
    ``width = (Nu + 1) * D + Du + sum of the sequence widths``.
    """

    def __init__(
        self, layout: FeatureLayout, num_fields: int, num_dense: int, interest: DomainInterestLayer | None
    ) -> None:
        super().__init__()
        self.interest = interest
        self.domain_embedding = nn.Embedding(layout.num_domains, layout.embedding_dim)
        self.width = (
            (num_fields + 1) * layout.embedding_dim
            + num_dense
            + sum(layout.sequence_width(s) for s in layout.sequences)
        )

    def forward(
        self, fields: torch.Tensor, sequences: list[EmbeddedSequence], dense: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        if self.interest is not None:
            fields = self.interest(fields, domain)
        parts = [fields.flatten(1), self.domain_embedding(domain), dense]
        parts += [masked_mean(s.keys, s.mask) for s in sequences]
        return torch.cat(parts, dim=1)


class ADINUserTower(nn.Module):
    """ADIN user tower: :class:`UserInput` (with the domain interest layer) -> SharedAndDomainNetwork
    (shared network ⊕ the row's domain network, DSBN) -> Linear -> L2 normalisation.

    Shapes: user fields [B, Nu, D], sequences, user dense [B, Du], domain [B] -> u [B, E], ||u|| = 1.
    """

    def __init__(self, layout: FeatureLayout, num_fields: int, num_dense: int, config: RetrievalConfig) -> None:
        super().__init__()
        if not config.user_hidden:
            raise ConfigError("retrieval.user_hidden: the ADIN user tower needs at least one layer width")
        if config.use_domain_interest and num_fields == 0:
            raise ConfigError(
                "retrieval.use_domain_interest: the user tower has no id features to re-weight "
                "(every id feature is in retrieval.item_fields)"
            )
        interest = (
            DomainInterestLayer(num_fields, layout.num_domains, max(1, num_fields // config.interest_reduction))
            if config.use_domain_interest
            else None
        )
        self.input = UserInput(layout, num_fields, num_dense, interest)
        self.network = SharedAndDomainNetwork(
            self.input.width, config.user_hidden, layout.num_domains, config.use_dsbn, config.fusion
        )
        self.output = nn.Linear(self.network.out_features, config.output_dim)

    def forward(
        self, fields: torch.Tensor, sequences: list[EmbeddedSequence], dense: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.network(self.input(fields, sequences, dense, domain), domain)
        return F.normalize(self.output(hidden).float(), dim=-1)


class DNNUserTower(nn.Module):
    """The two-tower baseline's user tower: :class:`UserInput` (no re-weighting) -> MLP -> L2 normalisation.

    Shapes: as :class:`ADINUserTower`.
    """

    def __init__(self, layout: FeatureLayout, num_fields: int, num_dense: int, config: RetrievalConfig) -> None:
        super().__init__()
        self.input = UserInput(layout, num_fields, num_dense, None)
        self.mlp = MLP(self.input.width, config.user_hidden, out_features=config.output_dim)

    def forward(
        self, fields: torch.Tensor, sequences: list[EmbeddedSequence], dense: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        return F.normalize(self.mlp(self.input(fields, sequences, dense, domain)).float(), dim=-1)


class ItemTower(nn.Module):
    """Item fields flattened (⊕ item dense) -> MLP -> Linear -> L2 normalisation; shared by all domains.

    Shapes: item fields [B, Ni, D], item dense [B, Di] -> v [B, E], ||v|| = 1.
    """

    def __init__(self, num_fields: int, embedding_dim: int, num_dense: int, config: RetrievalConfig) -> None:
        super().__init__()
        self.mlp = MLP(num_fields * embedding_dim + num_dense, config.item_hidden, out_features=config.output_dim)

    def forward(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(torch.cat([fields.flatten(1), dense], dim=1)).float(), dim=-1)


# --------------------------------------------------------------------------- loss


def in_batch_softmax_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    item_ids: torch.Tensor,
    positive: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch sampled softmax over the batch's positive rows, with log-Q correction.

    For positive rows ``i, j``: ``logit[i, j] = <u_i, v_j> / temperature - log q(item_j)`` (Yi et al.
    2019 eq. 3: the correction applies to every column, the positive's included; omitted when
    ``log_q`` is None); the loss of row ``i`` is the cross-entropy with target ``j = i``, and the
    result is the mean over positive rows. Duplicates: a column ``j != i`` holding the *same item*
    as row ``i`` is masked out (logit -inf) — it is not a negative of ``i``, and leaving it would
    push the positive's own score down. Columns of non-positive rows are masked out; non-positive
    rows contribute nothing.

    Branch-free (no device sync): computed on the full [B, B] matrix. A batch without positives
    gives exactly 0, still connected to ``user`` and ``item`` (zero gradients), so the backward
    reaches every parameter and embedding (fused optimizers, DDP and the sharded all-to-alls stay in
    step across ranks).

    Shapes: user, item [B, E]; item_ids [B] int64; positive [B] bool; log_q [B] or None -> scalar float32.
    """
    user, item = user.float(), item.float()
    size = user.shape[0]
    logits = user @ item.T / temperature  # [B, B]
    if log_q is not None:
        logits = logits - log_q.float()[None, :]
    eye = torch.eye(size, dtype=torch.bool, device=user.device)
    duplicate = (item_ids[:, None] == item_ids[None, :]) & ~eye
    keep = positive[None, :] & ~duplicate
    logits = logits.masked_fill(~keep, float("-inf"))
    logits = torch.where(positive[:, None], logits, torch.zeros_like(logits))  # finite rows for the unused
    targets = torch.arange(size, device=user.device)
    losses = F.cross_entropy(logits, targets, reduction="none")  # [B]
    weights = positive.float()
    return (losses * weights).sum() / weights.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- model


def _item_ids(features: KeyedJaggedTensor, key: str) -> torch.Tensor:
    """[B] int64 values of a single-valued id feature of a KJT."""
    return features[key].values().long()


class RetrievalDenseArch(nn.Module):
    """Embeddings -> user and item vectors -> in-batch softmax loss (a leaf module for the pipeline).

    Training updates the streaming frequency estimate with the items of the batch's positive rows
    (all ranks' rows, all-gathered, so that the estimate is identical on every rank and
    checkpoints exactly; ``stream_rows`` = the largest batch a rank contributes) before reading
    ``log q``. Evaluation reads the estimate without updating it.

    Returns ``(loss, user [B, E], item [B, E], item_ids [B], positive [B] bool)``.
    """

    # buffers (registered in __init__)
    user_field_index: torch.Tensor
    item_field_index: torch.Tensor
    user_dense_index: torch.Tensor
    item_dense_index: torch.Tensor

    def __init__(
        self,
        spec: DatasetSpec,
        layout: FeatureLayout,
        config: RetrievalConfig,
        mixed_precision: bool = False,
        stream_rows: int | None = None,
    ) -> None:
        super().__init__()
        if not spec.label_names:
            raise ConfigError("task = retrieval: the dataset has no label column to take positive rows from")
        self.layout = layout
        self.config = config
        self.features = TowerFeatures.resolve(spec, layout, config)
        self.mixed_precision = mixed_precision
        self.stream_rows = stream_rows
        f = self.features
        self.register_buffer("user_field_index", torch.tensor(f.user_fields, dtype=torch.long), persistent=False)
        self.register_buffer("item_field_index", torch.tensor(f.item_fields, dtype=torch.long), persistent=False)
        self.register_buffer("user_dense_index", torch.tensor(f.user_dense, dtype=torch.long), persistent=False)
        self.register_buffer("item_dense_index", torch.tensor(f.item_dense, dtype=torch.long), persistent=False)
        tower = ADINUserTower if config.model == "adin" else DNNUserTower
        self.user_tower = tower(layout, len(f.user_fields), len(f.user_dense), config)
        self.item_tower = ItemTower(len(f.item_fields), layout.embedding_dim, len(f.item_dense), config)
        self.frequency = (
            StreamingFrequencyEstimator(config.frequency_buckets, config.frequency_alpha)
            if config.log_q_correction
            else None
        )

    def forward(
        self,
        pooled: KeyedTensor | None,
        unpooled: dict[str, JaggedTensor],
        dense: torch.Tensor,
        domain: torch.Tensor,
        labels: torch.Tensor,
        sparse_ids: KeyedJaggedTensor,
        sequence_ids: KeyedJaggedTensor,
    ) -> tuple[torch.Tensor, ...]:
        with torch.autocast(
            device_type=dense.device.type,
            dtype=torch.bfloat16,
            enabled=self.mixed_precision and dense.device.type == "cuda",
        ):
            user, item = self.vectors(embed_features(self.layout, pooled, unpooled, dense, domain))
        item_ids = _item_ids(sparse_ids if self.features.item_key_pooled else sequence_ids, self.features.item_key)
        positive = labels[:, 0] > 0.5
        log_q = None
        if self.frequency is not None:
            if self.training:
                self.frequency.update(*self._stream(item_ids, positive))
            log_q = self.frequency.log_probability(item_ids)
        loss = in_batch_softmax_loss(user, item, item_ids, positive, self.config.temperature, log_q)
        return loss, user, item, item_ids, positive

    def vectors(self, features: EmbeddedFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """EmbeddedFeatures -> (u [B, E], v [B, E]) float32, L2-normalised."""
        fields, dense = features.fields, features.dense
        user = self.user_tower(
            fields.index_select(1, self.user_field_index),
            features.sequences,
            dense.index_select(1, self.user_dense_index),
            features.domain,
        )
        item = self.item_tower(
            fields.index_select(1, self.item_field_index), dense.index_select(1, self.item_dense_index)
        )
        return user, item

    def _stream(self, item_ids: torch.Tensor, positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's stream for the frequency estimate: every rank's (ids, positive), all-gathered."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return item_ids, positive
        rows = self.stream_rows or item_ids.shape[0]
        if item_ids.shape[0] > rows:
            raise RuntimeError(
                f"a batch of {item_ids.shape[0]} rows exceeds the {rows} rows per rank the frequency estimate gathers"
            )
        padded = item_ids.new_zeros(2, rows)
        padded[0, : item_ids.shape[0]] = item_ids
        padded[1, : item_ids.shape[0]] = positive.long()
        gathered = [torch.zeros_like(padded) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, padded)
        stream = torch.cat(gathered, dim=1)
        return stream[0], stream[1] > 0


class RetrievalOutput(NamedTuple):
    """What :class:`RetrievalModel` returns beside its loss, detached: one row per impression of the batch.

    A NamedTuple (so still the tuple TrainPipelineSparseDist passes through), read by name.
    """

    loss: torch.Tensor  # scalar: the batch's in-batch softmax loss
    user: torch.Tensor  # [B, E] L2-normalised user vectors
    item: torch.Tensor  # [B, E] L2-normalised item vectors
    item_ids: torch.Tensor  # [B] the ids of retrieval.item_key
    positive: torch.Tensor  # [B] bool: first label == 1 (the rows that are retrieval requests)
    domain: torch.Tensor  # [B] domain ids
    group_ids: torch.Tensor  # [B] the user key (Recall@K averages over users)


class RetrievalModel(nn.Module):
    """Batch -> ``(loss, RetrievalOutput(loss, user [B, E], item [B, E], item_ids [B], positive [B], domain [B],
    group_ids [B]))``.

    The pipeline's contract (as :class:`~torchrec_mdr.models.ranking.TrainModel`): the sharded
    collections of :class:`~torchrec_mdr.sparse.arch.SparseArch` are called here on batch
    attributes; everything dense is :class:`RetrievalDenseArch`. The outputs are detached.

    Args:
        spec, embedding_dim: the dataset and the tables' embedding dimension.
        config: the ``[retrieval]`` section.
        sparse_device, dense_device, eviction, mc_buckets, mixed_precision: as for
            :class:`~torchrec_mdr.models.ranking.RankingModel`.
        stream_rows: the largest batch of one rank (the frequency estimate's all-gather width).
        planning_only: see :class:`~torchrec_mdr.sparse.arch.SparseArch` (``mdr plan``).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        embedding_dim: int,
        config: RetrievalConfig,
        sparse_device: torch.device | None = None,
        dense_device: torch.device | None = None,
        eviction: "EvictionConfig | None" = None,
        mc_buckets: int = 1,
        mixed_precision: bool = False,
        stream_rows: int | None = None,
        planning_only: bool = False,
    ) -> None:
        super().__init__()
        self.sparse_arch = SparseArch(
            spec,
            embedding_dim,
            device=sparse_device,
            eviction=eviction,
            mc_buckets=mc_buckets,
            planning_only=planning_only,
        )
        self.dense_arch = RetrievalDenseArch(
            spec, FeatureLayout.from_spec(spec, embedding_dim), config, mixed_precision, stream_rows
        ).to(dense_device)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, RetrievalOutput]:
        pooled, unpooled = self.sparse_arch(batch.sparse_features, batch.sequence_features)
        loss, user, item, item_ids, positive = self.dense_arch(
            pooled,
            unpooled,
            batch.dense_features,
            batch.domain,
            batch.labels,
            batch.sparse_features,
            batch.sequence_features,
        )
        return loss, RetrievalOutput(
            loss.detach(), user.detach(), item.detach(), item_ids, positive, batch.domain, batch.group_ids
        )
