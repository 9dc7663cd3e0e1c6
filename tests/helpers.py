"""Test helpers shared by several test modules: small prepared datasets written through the real writer.

Import them with ``from helpers import ...``; ``conftest.py`` keeps only pytest's hooks and fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

from data_prep.writer import DatasetWriter, list_array
from torchrec_mdr.data.spec import ColumnSpec
from torchrec_mdr.models.features import EmbeddedFeatures, EmbeddedSequence, FeatureLayout, SequenceLayout


# A session key far above 2**32 (and above float32's exact range): the reader must keep it exact.
TOY_SESSION_BASE = 1 << 40


def toy_columns(max_length: int = 4, oov: str = "hash", session: bool = False) -> list[ColumnSpec]:
    """The toy schema; ``session`` adds a ``session_id`` column of kind ``session``."""
    return [
        ColumnSpec("click", "label"),
        ColumnSpec("domain", "domain"),
        ColumnSpec("group_id", "group"),
        *([ColumnSpec("session_id", "session")] if session else []),
        ColumnSpec("row_id", "id", cardinality=1 << 40, oov="reject"),
        ColumnSpec("item_id", "id", table="item", cardinality=50, oov=oov),
        ColumnSpec("tags", "multi_id", cardinality=10, oov="reject"),
        ColumnSpec(
            "hist_item_id",
            "sequence",
            table="item",
            cardinality=50,
            oov=oov,
            sequence_group="hist",
            max_length=max_length,
        ),
        ColumnSpec(
            "hist_domain", "sequence", cardinality=2, oov="reject", sequence_group="hist", max_length=max_length
        ),
        ColumnSpec("price", "dense"),
        ColumnSpec("age", "dense"),
    ]


def toy_rows(n: int, seed: int = 0, max_item: int = 50, session: bool = False) -> dict[str, object]:
    """Rows whose every value is derivable from row_id (so tests can check any batch exactly);
    ``session_id`` (with ``session``) is ``TOY_SESSION_BASE + row_id // 3``: sessions of 3 rows."""
    rng = np.random.default_rng(seed)
    row_id = np.arange(n, dtype=np.int64)
    lengths = rng.integers(0, 7, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hist = rng.integers(0, max_item, offsets[-1])
    tag_lengths = rng.integers(0, 3, n)
    tag_offsets = np.concatenate([[0], np.cumsum(tag_lengths)])
    return {
        "click": (row_id % 3 == 0).astype(np.int8),
        "domain": row_id % 2,
        "group_id": row_id // 5,
        **({"session_id": TOY_SESSION_BASE + row_id // 3} if session else {}),
        "row_id": row_id,
        "item_id": rng.integers(0, max_item, n),
        "tags": list_array(tag_offsets, rng.integers(0, 10, tag_offsets[-1])),
        "hist_item_id": list_array(offsets, hist),
        "hist_domain": list_array(offsets, hist % 2),
        "price": rng.random(n).astype(np.float32),
        "age": row_id.astype(np.float32),
    }


def write_toy(
    path: Path,
    n: int = 1000,
    row_group_size: int = 128,
    rows_per_file: int = 400,
    max_length: int = 4,
    oov: str = "hash",
    max_item: int = 50,
    session: bool = False,
) -> Path:
    writer = DatasetWriter(
        path,
        "toy",
        toy_columns(max_length, oov, session),
        ["a", "b"],
        row_group_size=row_group_size,
        rows_per_file=rows_per_file,
    )
    rows = toy_rows(n, max_item=max_item, session=session)
    cut = int(n * 0.8)
    for split, (lo, hi) in {"train": (0, cut), "valid": (cut, n)}.items():
        chunk = {k: (v.slice(lo, hi - lo) if hasattr(v, "slice") else v[lo:hi]) for k, v in rows.items()}
        writer.write(split, chunk)
    writer.close()
    return path


def strip_sessions(path: Path) -> Path:
    """Drop the ``session`` column of a prepared dataset from its files and its spec: a dataset as
    prepared before session columns existed (e.g. a cached ``data/synthetic-planted``)."""
    spec_file = path / "spec.json"
    spec = json.loads(spec_file.read_text())
    names = [c["name"] for c in spec["columns"] if c["kind"] == "session"]
    assert names, f"{path} has no session column"
    spec["columns"] = [c for c in spec["columns"] if c["kind"] != "session"]
    for split in spec["splits"].values():
        for relative in split["files"]:
            file = path / relative
            rows_per_group = pq.ParquetFile(file).metadata.row_group(0).num_rows
            pq.write_table(pq.read_table(file).drop_columns(names), file, row_group_size=rows_per_group)
    spec_file.write_text(json.dumps(spec))
    return path


def tiny_synthetic(out: Path, **options) -> Path:
    """A small planted-effect dataset (generator v1, 3,000 rows, 8-long sequences unless overridden) at ``out``."""
    from data_prep.synthetic import Options, convert

    settings = dict(
        rows=3000, users=200, items=1000, categories=10, brands=50, seq_length=8, min_seq_length=2, version=1
    )  # the generator these tests were written against
    settings.update(options)
    convert(Options(out=out, **settings))
    return out


def small_synthetic(out: Path) -> Path:
    """The 400-row planted dataset the model-wide tests share (30 users, 50 items, 5-long sequences, empty
    sequences allowed)."""
    return tiny_synthetic(out, rows=400, users=30, items=50, categories=5, brands=8, seq_length=5, min_seq_length=0)


# The tiny hand-made batch of the field-vector baselines' tests (DeepFM, DCNv2, FRNet, MaskNet): B rows, two id
# fields (user_id pooled, item_id the candidate), one sequence group of two columns (L long), dense features.
TINY_B, TINY_L, TINY_D, TINY_K, TINY_T = 5, 4, 3, 3, 2
TINY_LENGTHS = [4, 2, 1, 0, 3]  # row 3: an empty sequence


def tiny_layout(num_dense: int = 2, num_tasks: int = TINY_T) -> FeatureLayout:
    sequence = SequenceLayout("hist", ("hist_item_id", "hist_domain"), TINY_L, ("item_id",))
    return FeatureLayout(
        fields=("user_id", "item_id"),
        pooled=frozenset({"user_id"}),
        sequences=(sequence,),
        embedding_dim=TINY_D,
        num_dense=num_dense,
        num_domains=TINY_K,
        num_tasks=num_tasks,
    )


def tiny_features(num_dense: int = 2, seed: int = 3) -> EmbeddedFeatures:
    """Random features for :func:`tiny_layout` (padded behaviours zero; domains 0, 1, 2, 0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.arange(TINY_L)[None, :] < torch.tensor(TINY_LENGTHS)[:, None]
    keys = torch.randn(TINY_B, TINY_L, 2 * TINY_D, generator=generator) * mask[..., None]
    fields = torch.randn(TINY_B, 2, TINY_D, generator=generator)
    return EmbeddedFeatures(
        fields,
        [EmbeddedSequence(keys, mask, fields[:, 1])],
        torch.randn(TINY_B, num_dense, generator=generator),
        torch.tensor([0, 1, 2, 0, 1]),
    )


# MPZCH: torchrec's HashZchManagedCollisionModule in a managed-collision EmbeddingCollection (tests/test_mpzch_cpu.py
# pins what runs on CPU, tests/gpu/test_cuda_mpzch.py trains it on CUDA; docs/scale.md, "MPZCH").
MPZCH_INPUT_HASH_SIZE = 1 << 40  # raw ids are below this; torchrec's row-wise input dist places them by it


class ManagedItemModel(torch.nn.Module):
    """One managed table ``item`` (feature ``item``, ``zch_size`` rows of dimension ``dim``) behind ``module``, a
    torchrec managed-collision module of ``zch_size`` rows, in a ManagedCollisionEmbeddingCollection.

    Call: ``KJT (key item) -> (dict item -> JaggedTensor of [N, dim] rows, remapped KJT: the rows the ids map to)``.
    ``device`` meta: DistributedModelParallel materialises the table (build ``module`` on CPU: sharding rebuilds it
    on the training device, as for the sparse arch's managed tables).
    """

    def __init__(self, module: torch.nn.Module, zch_size: int, device: torch.device, dim: int = 8) -> None:
        from torchrec import EmbeddingCollection, EmbeddingConfig
        from torchrec.modules.mc_embedding_modules import ManagedCollisionEmbeddingCollection
        from torchrec.modules.mc_modules import ManagedCollisionCollection

        super().__init__()
        configs = [EmbeddingConfig(name="item", embedding_dim=dim, num_embeddings=zch_size, feature_names=["item"])]
        self.collection = ManagedCollisionEmbeddingCollection(
            EmbeddingCollection(tables=configs, device=device),
            ManagedCollisionCollection({"item": module}, configs),
            return_remapped_features=True,
        )

    def forward(self, features: KeyedJaggedTensor) -> tuple[dict[str, JaggedTensor], KeyedJaggedTensor]:
        return self.collection(features)


def mpzch_model(
    zch_size: int,
    device: torch.device,
    policy: str | None = None,
    ttl_hours: int = 1,
    buckets: int = 1,
    max_probe: int = 128,
    dim: int = 8,
) -> ManagedItemModel:
    """:class:`ManagedItemModel` behind torchrec's MPZCH module. ``policy``: None, ``"SINGLE_TTL_EVICTION"`` or
    ``"LRU_EVICTION"`` (torchrec's HashZchEvictionPolicyName): a row whose id was last seen more than
    ``ttl_hours`` ago may be taken by a new id. ``buckets``: the world size the table will be sharded over."""
    from torchrec.modules.hash_mc_evictions import HashZchEvictionConfig, HashZchEvictionPolicyName
    from torchrec.modules.hash_mc_modules import HashZchManagedCollisionModule

    module = HashZchManagedCollisionModule(
        zch_size=zch_size,
        device=torch.device("cpu") if device.type == "meta" else device,
        total_num_buckets=buckets,
        max_probe=max_probe,
        input_hash_size=MPZCH_INPUT_HASH_SIZE,
        name="item",
        eviction_policy_name=HashZchEvictionPolicyName(policy) if policy is not None else None,
        eviction_config=HashZchEvictionConfig(features=["item"], single_ttl=ttl_hours) if policy else None,
    )
    return ManagedItemModel(module, zch_size, device, dim)


def item_ids(ids: list[int], device: torch.device | None = None) -> KeyedJaggedTensor:
    """A KJT of one feature ``item`` with one id per row."""
    return KeyedJaggedTensor(
        ["item"], torch.tensor(ids, device=device), lengths=torch.ones(len(ids), dtype=torch.int32, device=device)
    )
