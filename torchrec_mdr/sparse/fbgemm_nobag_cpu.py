"""The unpooled (EmbeddingCollection) row-wise Adagrad backward on CPU, through fbgemm's pooled kernel.

Why: fbgemm-gpu-cpu 1.8.0's CPU kernel for
``fbgemm::split_embedding_nobag_backward_codegen_rowwise_adagrad_cpu`` (the fused backward +
optimizer step of every EmbeddingCollection table: the behaviour sequences) accumulates each
looked-up id's gradient in a nested ``std::unordered_map<id, std::unordered_map<table,
std::vector<float>>>`` — one hash probe per lookup and one heap-allocated buffer per distinct id —
before it updates the rows. Measured with one thread, a 200k x 16 table and Zipf ids, 50 lookups per
row: 16 us per batch row at batch 1024 and 25 us at batch 4096 (the cost per row grows with the
batch: the maps outgrow the caches). The pooled kernel (``split_embedding_backward_codegen_
rowwise_adagrad_cpu``, what every EmbeddingBagCollection uses) sorts the lookups by id (CSR -> CSC),
sums each id's gradients with fbgemm's JIT SpMDM kernel and applies fbgemm's fused row-wise
Adagrad: 1.0 and 1.2 us per batch row on the same lookups.

What this module does: it replaces the CPU kernel of the unpooled op with a function that calls
the pooled op once per table, each lookup being its own bag of one (sum pooling, ``offsets =
0, 1, ..., n``). A bag of one id has that id's embedding as its pooled value and passes its output
gradient unchanged to the id's row, so the pooled kernel sees exactly the gradient rows the unpooled
one would, sums them per id and applies the same update once per distinct row:
``G = sum of the row's gradients; m += mean_d(G_d^2); w -= lr * G / (sqrt(m) + eps)``. Features
that share a table (a candidate column and its behaviour sequence) are concatenated into one call,
so a row looked up by both gets one update from its summed gradient, as in the unpooled kernel.
Results equal the unpooled kernel's up to float summation order.

Limits, checked per call (a TrainingError says which): weight decay and max-norm must be 0 (the
pooled CPU fast path ignores both; torchrec-mdr's fused optimizers use neither) and weights float32.
Registration happens only for the fbgemm version and op schema this was written for
(:data:`FBGEMM_VERSION`, :data:`OP_SCHEMA`); with any other version :func:`install` leaves
fbgemm's kernel in place and logs that it did (a later fbgemm may have fixed the kernel).
"""

from __future__ import annotations

import logging
import warnings

import torch

from torchrec_mdr.errors import TrainingError

logger = logging.getLogger(__name__)

FBGEMM_VERSION = "1.8.0"  # the fbgemm-gpu-cpu release this was written for and measured with
OP = "split_embedding_nobag_backward_codegen_rowwise_adagrad_cpu"
OP_SCHEMA = (
    "fbgemm::split_embedding_nobag_backward_codegen_rowwise_adagrad_cpu(Tensor grad_output, "
    "Tensor(a!) host_weights, Tensor weights_placements, Tensor weights_offsets, int D, Tensor hash_size_cumsum, "
    "int total_hash_size_bits, Tensor indices, Tensor offsets, bool stochastic_rounding, "
    "Tensor(b!) momentum1_host, Tensor momentum1_placements, Tensor momentum1_offsets, "
    "Tensor learning_rate_tensor, float eps=0., float weight_decay=0., int weight_decay_mode=0, "
    "float max_norm=0.) -> ()"
)
POOLED_OP_SCHEMA = (
    "fbgemm::split_embedding_backward_codegen_rowwise_adagrad_cpu(Tensor grad_output, Tensor(a!) host_weights, "
    "Tensor weights_placements, Tensor weights_offsets, Tensor D_offsets, int max_D, Tensor hash_size_cumsum, "
    "int total_hash_size_bits, Tensor indices, Tensor offsets, int pooling_mode, Tensor indice_weights, "
    "bool stochastic_rounding, Tensor(b!) momentum1_host, Tensor momentum1_placements, "
    "Tensor momentum1_offsets, Tensor learning_rate_tensor, float eps=0., float weight_decay=0., "
    "int weight_decay_mode=0, float max_norm=0., int output_dtype=0) -> ()"
)
SUM_POOLING = 0  # fbgemm PoolingMode.SUM

_library: torch.library.Library | None = None  # keeps the registration alive


def _table_rows(hash_size_cumsum: list[int], feature: int) -> int:
    """Rows of ``feature``'s table: fbgemm's per-feature cumsum steps only at a table's last feature."""
    start = hash_size_cumsum[feature]
    return next(end - start for end in hash_size_cumsum[feature + 1 :] if end != start)


def nobag_backward_via_pooled(
    grad_output: torch.Tensor,
    host_weights: torch.Tensor,
    weights_placements: torch.Tensor,
    weights_offsets: torch.Tensor,
    D: int,
    hash_size_cumsum: torch.Tensor,
    total_hash_size_bits: int,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    stochastic_rounding: bool,
    momentum1_host: torch.Tensor,
    momentum1_placements: torch.Tensor,
    momentum1_offsets: torch.Tensor,
    learning_rate_tensor: torch.Tensor,
    eps: float = 0.0,
    weight_decay: float = 0.0,
    weight_decay_mode: int = 0,
    max_norm: float = 0.0,
) -> None:
    """The unpooled op's update (same signature), made by the pooled op (see the module doc).

    Shapes: ``grad_output`` [n, D], ``indices`` [n], ``offsets`` [T * B + 1] (feature-major, as the
    unpooled op takes them), ``weights_offsets`` / ``*_placements`` / ``momentum1_offsets`` [T].
    """
    if weight_decay != 0.0 or max_norm != 0.0:
        raise TrainingError(
            f"fbgemm::{OP} (torchrec_mdr.sparse.fbgemm_nobag_cpu): weight_decay "
            f"{weight_decay} / max_norm {max_norm} are not supported; both must be 0"
        )
    if host_weights.dtype != torch.float32 or grad_output.dtype != torch.float32:
        raise TrainingError(
            f"fbgemm::{OP} (torchrec_mdr.sparse.fbgemm_nobag_cpu): float32 weights and gradients "
            f"only, got {host_weights.dtype} / {grad_output.dtype}"
        )
    num_features = weights_offsets.numel()
    batch = (offsets.numel() - 1) // num_features
    bounds = offsets[::batch].tolist()  # feature t's lookups: bounds[t]:bounds[t + 1]
    table_of = weights_offsets.tolist()
    cumsum = hash_size_cumsum.tolist()
    grad_output = grad_output.reshape(-1, D)
    features_of: dict[int, list[int]] = {}
    for feature, table in enumerate(table_of):
        features_of.setdefault(table, []).append(feature)
    for features in features_of.values():
        first = features[0]
        spans = [(bounds[t], bounds[t + 1]) for t in features if bounds[t + 1] > bounds[t]]
        if not spans:
            continue
        table_indices = torch.cat([indices[a:b] for a, b in spans])
        table_grad = torch.cat([grad_output[a:b] for a, b in spans])
        count = table_indices.numel()
        one = slice(first, first + 1)
        torch.ops.fbgemm.split_embedding_backward_codegen_rowwise_adagrad_cpu(
            table_grad,
            host_weights,
            weights_placements[one],
            weights_offsets[one],
            torch.tensor([0, D], dtype=torch.int32),
            D,
            torch.tensor([0, _table_rows(cumsum, first)], dtype=hash_size_cumsum.dtype),
            total_hash_size_bits,
            table_indices,
            torch.arange(count + 1, dtype=offsets.dtype),
            SUM_POOLING,
            torch.empty(0, dtype=torch.float32),
            stochastic_rounding,
            momentum1_host,
            momentum1_placements[one],
            momentum1_offsets[one],
            learning_rate_tensor,
            eps,
            weight_decay,
            weight_decay_mode,
            max_norm,
            0,
        )


def install() -> bool:
    """Route the unpooled CPU backward through the pooled kernel (idempotent).

    Returns whether this module's kernel is the op's CPU kernel: False where fbgemm is not the
    version and op schema this was written for (fbgemm's own kernel stays; logged).
    """
    global _library
    if _library is not None:
        return True
    import fbgemm_gpu  # noqa: F401 - defines the ops

    version = getattr(fbgemm_gpu, "__version__", "unknown")
    ops = torch.ops.fbgemm
    schemas = (
        str(getattr(ops, OP).default._schema),
        str(ops.split_embedding_backward_codegen_rowwise_adagrad_cpu.default._schema),
    )
    if not version.startswith(FBGEMM_VERSION) or schemas != (OP_SCHEMA, POOLED_OP_SCHEMA):
        logger.info(
            "fbgemm-gpu %s: kept fbgemm's unpooled CPU backward (torchrec_mdr.sparse.fbgemm_nobag_cpu "
            "was written for %s)",
            version,
            FBGEMM_VERSION,
        )
        return False
    library = torch.library.Library("fbgemm", "IMPL")
    with warnings.catch_warnings():  # torch warns that a kernel is overridden: that is the point
        warnings.simplefilter("ignore", UserWarning)
        library.impl(OP, nobag_backward_via_pooled, "CPU")
    _library = library
    logger.info("fbgemm::%s on CPU runs through the pooled kernel (fbgemm-gpu %s)", OP, version)
    return True
