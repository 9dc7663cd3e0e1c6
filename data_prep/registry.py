"""The converters of ``mdr data``: name -> module exposing ``Options`` (a dataclass) and ``convert``.

Each converter module (a package for the file-format converters: ``data_prep/<name>/``, its
``__init__`` re-exporting the two names) defines ``Options`` (extending
:class:`data_prep.common.OutputOptions`; its fields become the command's flags) and
``convert(options) -> DatasetSpec``, which writes the parquet splits and ``spec.json`` through
:class:`data_prep.writer.DatasetWriter`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Converter:
    name: str
    help: str
    module_name: str

    def module(self) -> ModuleType:
        return importlib.import_module(self.module_name)


CONVERTERS = {
    c.name: c
    for c in (
        Converter(
            "synthetic", "planted-effect synthetic multi-domain data with a known oracle AUC", "data_prep.synthetic"
        ),
        Converter(
            "movielens",
            "MovieLens ml-100k / ml-1m / RecBole atomic files (domains: age or genre groups)",
            "data_prep.movielens",
        ),
        Converter("taobao", "Taobao UserBehavior.csv (the ADS paper's public set)", "data_prep.taobao"),
        Converter(
            "aliccp",
            "Ali-CCP raw skeleton + common features, or the preprocessed CSV (field 301 = scenario)",
            "data_prep.aliccp",
        ),
        Converter("kuairand", "KuaiRand logs with user/video feature joins (tab = scenario)", "data_prep.kuairand"),
    )
}
