"""``mdr bench table``: every row is a loadable config, and the tables are laid out and marked as the papers'."""

from __future__ import annotations

import statistics

import pytest

from torchrec_mdr.bench.paper_table import MISSING, PaperTableOptions, _variants, render, rows
from torchrec_mdr.bench.proof import overrides
from torchrec_mdr.config import ConfigError, load_config
from torchrec_mdr.experiment import ExperimentConfig


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from data_prep.synthetic import Options, convert

    path = tmp_path_factory.mktemp("table") / "syn"
    convert(Options(out=path, rows=1000, users=40, items=80, categories=4, brands=8, seq_length=5, min_seq_length=1))
    return path


@pytest.mark.parametrize("paper", ["ads", "sfpnet"])
def test_every_row_is_a_config_that_loads(paper, data, tmp_path):
    options = PaperTableOptions(paper=paper, data=data, work=tmp_path, out=tmp_path, domain_features=["user_activity"])
    variants = _variants(options)
    assert len({v.slug for v in variants}) == len(variants)  # one run folder each
    for variant in variants:
        config = load_config(ExperimentConfig, None, overrides(options, variant, data, 0))
        assert config.model.name == variant.model
    labels = [r if isinstance(r, str) else r.label for _, group in rows(options) for r in group]
    if paper == "ads":
        assert labels[:7] == ["DNN", "DeepFM", "DCNv2", "APG", "AdaSparse", "DFFM", "MaskNet"]
        assert {"DIN +PEPNet", "MHA +ADS", "CAN +PEPNet"} <= set(labels)
        missing = [r for _, group in rows(options) for r in group if isinstance(r, str)]
        assert missing == []  # every row of the ADS table is a model of the library
        masknet = next(v for v in variants if v.label == "MaskNet")
        assert (masknet.model, masknet.overrides) == ("masknet", ())
        dffm = next(v for v in variants if v.label == "DFFM")
        assert dffm.model == "dffm" and 'model.dffm.domain_features=["user_activity"]' in dffm.overrides
        pepnet = next(v for v in variants if v.label == "MHA +PEPNet")
        assert "model.pepnet.backbone=mha" in pepnet.overrides
    else:
        assert labels == [
            "BaseDNN",
            "DeepFM",
            "SharedBottom",
            "MMoE",
            "PLE",
            "STAR",
            "AESM2",
            "AdaSparse",
            "PEPNet",
            "MARIA",
            "SFPNet",
        ]
        maria = next(v for v in variants if v.label == "MARIA")
        assert maria.model == "maria" and 'model.maria.scenario_features=["user_activity"]' in maria.overrides


def _metrics(auc: float, domains: list[str]) -> dict:
    return {"auc": auc, "per_domain": {d: {"auc": auc + 0.01 * i} for i, d in enumerate(domains)}}


def test_ads_layout_improvement_bold_and_significance(data, tmp_path):
    from torchrec_mdr.data.spec import DatasetSpec

    domains = DatasetSpec.load(data).domain_names
    options = PaperTableOptions(paper="ads", data=data, seeds=6, work=tmp_path, out=tmp_path)
    results = {}
    for seed in range(6):
        for i, variant in enumerate(_variants(options)):
            auc = 0.70 + 0.001 * i + (0.02 if variant.label == "DIN +ADS" else 0.0) + 0.0001 * seed
            results[(variant.label, data.name, seed)] = _metrics(auc, domains)
    table = render(options, results)
    line = {row.split(" | ")[0][2:]: row for row in table.splitlines() if row.startswith("| ")}
    dnn, ads = (
        statistics.fmean(results[(label, data.name, s)]["auc"] for s in range(6)) for label in ("DNN", "DIN +ADS")
    )
    assert line["DNN"].startswith(f"| DNN | {dnn:.4f} | - | {dnn:.4f} |")
    assert f"| **{ads:.4f}*** | {((ads - 0.5) / (dnn - 0.5) - 1) * 100:+.2f}% |" in line["DIN +ADS"]  # best, p < .05
    assert MISSING not in line["DFFM"]
    masknet = statistics.fmean(results[("MaskNet", data.name, s)]["auc"] for s in range(6))
    imp = ((masknet - 0.5) / (dnn - 0.5) - 1) * 100
    # a trained row of the DNN-based group, here its best (the made-up AUCs grow down the table)
    assert line["MaskNet"].startswith(f"| MaskNet | **{masknet:.4f}** | {imp:+.2f}% |")
    assert not line["AdaSparse"].startswith("| AdaSparse | **")
    assert "*" not in line["DIN"] and "*" not in line["DIN +PEPNet"]  # neither best nor ADS


def test_sfpnet_marks_a_scenario_only_when_mann_whitney_says_so(data, tmp_path):
    from torchrec_mdr.data.spec import DatasetSpec

    domains = DatasetSpec.load(data).domain_names
    options = PaperTableOptions(paper="sfpnet", data=data, seeds=4, work=tmp_path, out=tmp_path)
    results = {
        (v.label, data.name, s): _metrics(0.6 + (0.05 if v.label == "SFPNet" else 0.001 * s), domains)
        for v in _variants(options)
        for s in range(4)
    }
    table = render(options, results)
    sfpnet = next(row for row in table.splitlines() if row.startswith("| SFPNet |"))
    assert sfpnet.count("*") == len(domains)  # 4 vs 4, all above: p_MW = 0.029
    maria = next(row for row in table.splitlines() if row.startswith("| MARIA |"))
    assert maria.startswith("| MARIA | 0.6") and MISSING not in maria  # trained and rendered like the others
    options.seeds = 3
    assert "*" not in next(row for row in render(options, results).splitlines() if row.startswith("| SFPNet |"))


def test_bad_paper_or_data_is_one_clear_error(tmp_path):
    from torchrec_mdr.bench.paper_table import run

    with pytest.raises(ConfigError, match="--paper must be one of"):
        run(PaperTableOptions(paper="star", data=tmp_path))
    with pytest.raises(ConfigError, match="is not a prepared dataset"):
        run(PaperTableOptions(paper="ads", data=tmp_path / "none"))


def test_the_table_states_its_training_time(data, tmp_path):
    from torchrec_mdr.data.spec import DatasetSpec

    domains = DatasetSpec.load(data).domain_names
    options = PaperTableOptions(paper="sfpnet", data=data, seeds=2, work=tmp_path, out=tmp_path, jobs=2)
    results = {
        (variant.label, data.name, seed): {**_metrics(0.7, domains), "train": {"wall_sec": 30.0 + 60.0 * seed}}
        for variant in _variants(options)
        for seed in range(2)
    }
    table = render(options, results)
    assert "Training time: 22 runs, 22.0 min in all" in table  # 11 rows x (30 s + 90 s)
    assert "2 run(s) at once" in table and "BaseDNN 60, DeepFM 60" in table
    assert "--patience 2`" in table  # the defaults are not spelled out
    assert "with 2 seed(s) per side the smallest attainable p is 0.333" in table  # 2 / C(4, 2)
    fresh = render(PaperTableOptions(paper="sfpnet", data=data, max_epochs=1, evals_per_epoch=8), results)
    assert "--max-epochs 1 --patience 2 --evals-per-epoch 8`" in fresh
