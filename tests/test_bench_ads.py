"""``mdr bench ads``: ADS's step time over its backbone's, paired per round, and the profile table."""

from __future__ import annotations

from torchrec_mdr.bench.ads_backbone import AdsBenchOptions, format_profile, format_ratio_table, round_ratios, variants
from torchrec_mdr.cli import main


def test_variants_put_the_backbone_first():
    assert variants(AdsBenchOptions(chunks=[1, 5])) == ["din", "ads k=1", "ads k=5"]
    assert variants(AdsBenchOptions(backbone="mha", chunks=[10])) == ["mha", "ads k=10"]


def test_ratios_are_per_round_not_of_medians():
    """ADS seconds / backbone seconds round by round: medians 2.0 / 2.0 would say 1.0; the rounds say
    1.5, 0.5, 1.1 (median 1.1)."""
    seconds = {"din": [1.0, 4.0, 2.0], "ads k=1": [1.5, 2.0, 2.2]}
    assert [round(r, 6) for r in round_ratios(seconds, "ads k=1", "din")] == [1.5, 0.5, 1.1]
    options = AdsBenchOptions(chunks=[1], steps=10, repeats=3)
    lines = format_ratio_table(
        {50: seconds, 20: {"din": [0.5, 0.5, 0.5], "ads k=1": [0.6, 0.6, 0.6]}}, options
    ).splitlines()
    assert "median (min-max) of 3 rounds x 10 steps" in lines[0]
    assert lines[1].split() == ["T", "din", "ms/step", "ads", "k=1"]
    # rows sorted by T; din ms/step = median window / steps; then median (min-max) of the round ratios
    assert lines[2].split() == ["20", "50.0", "1.200", "(1.200-1.200)"]
    assert lines[3].split() == ["50", "200.0", "1.100", "(0.500-1.500)"]
    flops = {20: {"din": 2e9, "ads k=1": 2.5e9}, 50: {"din": 4e9, "ads k=1": 4.4e9}}
    lines = format_ratio_table({50: seconds}, options, flops).splitlines()
    assert lines[3].startswith("training FLOPs per step")
    assert [line.split() for line in lines[5:]] == [["20", "2.000", "1.250"], ["50", "4.000", "1.100"]]


def test_profile_lists_the_operators_by_ads_extra_time():
    options = AdsBenchOptions(chunks=[1, 10], profile_seq_length=50, profile_steps=5, profile_top=2)
    profile = {
        "din": {"aten::mm": 30.0, "aten::cat": 5.0, "(all)": 34.0},
        "ads k=1": {"aten::mm": 36.0, "aten::cat": 5.5, "aten::bmm": 9.0, "(all)": 50.5},
        "ads k=10": {"aten::mm": 33.0, "aten::cat": 5.0, "aten::bmm": 8.0, "(all)": 46.0},
    }
    lines = format_profile(profile, options).splitlines()
    assert "T = 50 (mean of 5 one-step recordings), sorted by ads k=1 - din" in lines[0]
    assert lines[1].split() == ["operator", "din", "ads", "k=1", "ads", "k=10", "extra"]
    assert lines[2].split() == ["(all)", "34.00", "50.50", "46.00", "16.50"]  # the mean step total
    assert [line.split() for line in lines[3:]] == [
        ["aten::bmm", "0.00", "9.00", "8.00", "9.00"],
        ["aten::mm", "30.00", "36.00", "33.00", "6.00"],
    ]


def test_bad_options_are_one_line_errors(capsys):
    assert main(["bench", "ads", "--backbone", "gru"]) == 2
    assert "'backbone': 'gru' is not one of ['can', 'din', 'mha']" in capsys.readouterr().err
    assert main(["bench", "ads", "--seq-lengths", "20", "--profile-seq-length", "50"]) == 2
    assert "'profile_seq_length': 50 is not one of 'seq_lengths' [20]" in capsys.readouterr().err


def test_bench_ads_tiny(tmp_path, capsys):
    """The real trainers of DIN and ADS (two chunk settings) on generated data, timed and profiled."""
    assert (
        main(
            [
                "bench",
                "ads",
                "--data-root",
                str(tmp_path / "data"),
                "--rows",
                "1000",
                "--seq-lengths",
                "4",
                "--chunks",
                "1",
                "2",
                "--batch-size",
                "16",
                "--embedding-dim",
                "4",
                "--warmup",
                "1",
                "--steps",
                "1",
                "--repeats",
                "2",
                "--batches-in-memory",
                "2",
                "--profile-seq-length",
                "4",
                "--profile-steps",
                "1",
                "--profile-top",
                "3",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("    T"))
    row = lines[header + 1].split()
    assert row[0] == "4" and float(row[1]) > 0
    for median, spread in (row[2:4], row[4:6]):
        low, high = (float(v) for v in spread.strip("()").split("-"))
        assert 0 < low <= float(median) <= high
    profile = next(i for i, line in enumerate(lines) if line.startswith("self CPU ms per step at T = 4"))
    assert lines[profile + 1].split()[:3] == ["operator", "din", "ads"]
    assert len(lines) == profile + 3 + 3  # title, header, total, the top 3 operators
    flops = next(i for i, line in enumerate(lines) if line.startswith("training FLOPs per step"))
    gflops, *ratios = (float(v) for v in lines[flops + 2].split()[1:])
    assert gflops > 0 and all(r > 1 for r in ratios)  # ADS adds its generators and PSRG's products
    assert (tmp_path / "data" / "seq4" / "spec.json").is_file()
