"""Checkpoints written before the model toolkit (``torchrec_mdr/models/blocks/``) renamed the dense
parameters of DIN, MHA, CAN, ADS, SFPNet, ADIN and DeepFM still load: a parameter this model has under its new name
and the checkpoint holds only under the old one is read from the old entry. Nothing else is renamed, and a
checkpoint holding the new names is read as it is.

Old -> new (the whole list; a new rename adds a line here and a case in tests/test_checkpoint.py):

* ``dense_arch.model.domain_embedding.*`` -> ``dense_arch.model.input.domain_embedding.*``
* ``dense_arch.model.dense_field.*`` -> ``dense_arch.model.input.dense_field.*`` (DeepFM's field vectors)
* ``dense_arch.model.queries.<i>.*`` -> ``dense_arch.model.pooling.<i>.query_projection.*``
* ``dense_arch.model.attentions.<i>.*`` -> ``dense_arch.model.pooling.<i>.attention.*``
* ``sparse_arch.embedding_collection.embeddings.<table>.*`` ->
  ``sparse_arch.sequence_bag_collection.embedding_bags.<table>.*`` (the sequence tables of the models that
  only mean-pool their sequences, looked up pooled since; same rows, same values)

Only model weights are renamed: a run resumed from such a checkpoint would also need the fused optimizer's
state under the new names, so ``--resume`` stops with the checkpoint's "does not hold" error instead.
"""

from __future__ import annotations

import re
from collections.abc import Container

RENAMES: tuple[tuple[re.Pattern[str], str], ...] = (  # (new name, its old form)
    (re.compile(r"dense_arch\.model\.input\.domain_embedding\."), "dense_arch.model.domain_embedding."),
    (re.compile(r"dense_arch\.model\.input\.dense_field\."), "dense_arch.model.dense_field."),
    (re.compile(r"dense_arch\.model\.pooling\.(\d+)\.query_projection\."), r"dense_arch.model.queries.\1."),
    (re.compile(r"dense_arch\.model\.pooling\.(\d+)\.attention\."), r"dense_arch.model.attentions.\1."),
    (
        re.compile(r"sparse_arch\.sequence_bag_collection\.embedding_bags\."),
        "sparse_arch.embedding_collection.embeddings.",
    ),
)


def old_name(name: str) -> str | None:
    """The pre-toolkit name of parameter ``name``, or None when it was not renamed."""
    for new, old in RENAMES:
        if new.search(name):
            return new.sub(old, name, count=1)
    return None


def legacy_aliases(names: list[str], saved: Container[str], prefix: str = "") -> dict[str, str]:
    """{name: old name} for each of ``names`` that ``saved`` lacks (under ``prefix``) but holds under its
    old name."""
    aliases = {}
    for name in names:
        old = old_name(name)
        if prefix + name not in saved and old is not None and prefix + old in saved:
            aliases[name] = old
    return aliases
