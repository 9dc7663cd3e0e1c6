"""The identity of a training run, checked before a checkpoint is loaded into it: the model, managed-collision
and optimizer configs, the dataset spec's fingerprint and the data-order settings
(:func:`run_identity`), and the named differences that make a checkpoint the wrong one
(:func:`check_identity`). Used by :mod:`torchrec_mdr.training.checkpoint` and the commands that open a run."""

from __future__ import annotations

import hashlib
import json

from pathlib import Path
from typing import Any

from torchrec_mdr.config import to_dict
from torchrec_mdr.data.spec import EMBEDDED_KINDS, DatasetSpec
from torchrec_mdr.errors import TrainingError
from torchrec_mdr.experiment import ExperimentConfig
from torchrec_mdr.models.registry import MODELS, ModelConfig
from torchrec_mdr.sparse.mch.config import EvictionConfig


def dataset_signature(spec: DatasetSpec) -> dict[str, Any]:
    """What a model trained on ``spec`` depends on: columns (name, kind, table, cardinality, sequence
    group, max length), domain names and labels — not row counts, files or the dataset's name.
    ``fingerprint`` is a short hash of the rest."""
    columns = [
        {
            "name": c.name,
            "kind": c.kind,
            "table": c.table_name if c.kind in EMBEDDED_KINDS else None,
            "cardinality": c.cardinality,
            "sequence_group": c.sequence_group,
            "max_length": c.max_length,
        }
        for c in spec.columns
    ]
    signature: dict[str, Any] = {"columns": columns, "domains": list(spec.domain_names), "labels": spec.label_names}
    text = json.dumps(signature, sort_keys=True)
    signature["fingerprint"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return signature


def model_options(config: ModelConfig) -> dict[str, Any]:
    """``model.*`` as a plain dict without the sections of the models not chosen (what config.json and a
    checkpoint's identity store: loading fills those sections with their defaults)."""
    return chosen_model_options(to_dict(config))


def chosen_model_options(model: dict[str, Any]) -> dict[str, Any]:
    """A plain ``model.*`` dict without the options sections of the models not chosen: every section but
    ``model.<chosen>`` (the sections are its only dict values), including a section of a model no longer
    registered. A run's config.json written before it stored the chosen section only holds them all."""
    name = model.get("name", "din")
    entry = MODELS.get(name) if isinstance(name, str) else None
    chosen = entry.config_field if entry is not None else None
    return {k: v for k, v in model.items() if not isinstance(v, dict) or k == chosen}


def run_identity(config: ExperimentConfig, spec: DatasetSpec) -> dict[str, Any]:
    """The parts of a run a checkpoint must agree with to be loaded into it: the model config (without
    the options of the other registered models), the managed-collision config, the optimizer kinds
    (their state must fit) and the dataset signature. Learning rates, steps, sharding may change."""
    return {
        "model": model_options(config.model),
        "eviction": to_dict(config.sparse.eviction),
        "optimizer": {"sparse": config.optimizer.sparse, "dense": config.optimizer.dense},
        "dataset": dataset_signature(spec),
    }


def data_order(config: ExperimentConfig, world_size: int) -> dict[str, Any]:
    """Settings that decide which rows each step trains on (exact resumption needs them unchanged)."""
    data = config.data
    return {
        "world_size": world_size,
        "batch_size": data.batch_size,
        "num_workers": data.num_workers,
        "shuffle": data.shuffle,
        "shuffle_buffer_rows": data.shuffle_buffer_rows,
        "drop_last": data.drop_last,
        "seed": data.seed,
    }


def _describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)


def differences(saved: Any, current: Any, key: str = "", defaults: Any = None) -> list[str]:
    """Human-readable differences ``key: <saved> in the checkpoint, <current> now`` of two JSON trees.

    Lists of dicts with a ``name`` (the dataset's columns) are compared by name. ``defaults`` (a tree of
    the same shape) holds the options' default values: a key missing from the checkpoint whose current
    value is its default is an option added after the checkpoint was written, and is no difference."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        defaults = defaults if isinstance(defaults, dict) else {}
        for name in list(saved) + [k for k in current if k not in saved]:
            sub = f"{key}.{name}" if key else str(name)
            if name not in current:
                found.append(f"{sub}: only in the checkpoint")
            elif name not in saved:
                if name not in defaults or defaults[name] != current[name]:
                    found.append(f"{sub}: not in the checkpoint")
            else:
                found.extend(differences(saved[name], current[name], sub, defaults.get(name)))
        return found
    if (
        isinstance(saved, list)
        and isinstance(current, list)
        and saved
        and current
        and all(isinstance(v, dict) and "name" in v for v in saved + current)
    ):
        return differences({v["name"]: v for v in saved}, {v["name"]: v for v in current}, key)
    if saved != current:
        return [f"{key}: {_describe(saved)} in the checkpoint, {_describe(current)} now"]
    return []


def check_identity(
    saved: dict[str, Any],
    current: dict[str, Any],
    path: Path,
    parts: tuple[str, ...] = ("model", "eviction", "optimizer", "dataset"),
) -> None:
    """TrainingError naming every difference in ``parts`` between a checkpoint and this run."""
    what = {
        "model": "model config",
        "eviction": "sparse.eviction config",
        "optimizer": "optimizer kinds",
        "dataset": "dataset spec",
    }
    for part in parts:
        saved_part = dict(saved.get(part, {}))
        current_part = dict(current[part])
        if part == "dataset":
            if saved_part.get("fingerprint") == current_part.get("fingerprint"):
                continue
            saved_part.pop("fingerprint", None)
            current_part.pop("fingerprint", None)
        defaults = (
            to_dict(ModelConfig()) if part == "model" else to_dict(EvictionConfig()) if part == "eviction" else None
        )
        found = differences(
            saved_part,
            current_part,
            "model"
            if part == "model"
            else "sparse.eviction"
            if part == "eviction"
            else "optimizer"
            if part == "optimizer"
            else "",
            defaults,
        )
        if found:
            shown = "; ".join(found[:8]) + (f"; ... ({len(found) - 8} more)" if len(found) > 8 else "")
            raise TrainingError(f"checkpoint {path} was written for a different {what[part]}: {shown}")
