"""The mdr command line: converters, show, validate, demo, bench loader, clean one-line errors."""

from __future__ import annotations

import subprocess
import sys

from torchrec_mdr.cli import main


def test_synthetic_show_validate(tmp_path, capsys):
    out = tmp_path / "syn"
    assert (
        main(
            [
                "data",
                "synthetic",
                "--out",
                str(out),
                "--rows",
                "3000",
                "--users",
                "100",
                "--items",
                "1000",
                "--categories",
                "10",
                "--domains",
                "2",
                "--domain-proportions",
                "3",
                "1",
                "--seq-length",
                "8",
                "--min-seq-length",
                "2",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "split train: 2,400 rows" in text and "oracle AUC" in text and "domain1" in text
    assert main(["data", "show", "--data", str(out)]) == 0
    assert "hist_item_id" in capsys.readouterr().out
    assert main(["data", "validate", "--data", str(out)]) == 0
    assert "OK (every value of 3,000 rows" in capsys.readouterr().out
    # the output exists: a second run refuses to overwrite it unless told to
    assert main(["data", "synthetic", "--out", str(out), "--rows", "100"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_demo_and_bench_loader(tmp_path, capsys):
    data = tmp_path / "demo"
    assert main(["demo", "--data", str(data), "--rows", "2000", "--batch-size", "256"]) == 0
    text = capsys.readouterr().out
    assert "read one epoch of 'train': 1,600 rows in 7 batches" in text and "rows/s" in text
    assert (
        main(
            [
                "bench",
                "loader",
                "--data",
                str(tmp_path / "bench"),
                "--rows",
                "3000",
                "--workers",
                "0",
                "1",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in lines] == ["0", "1"] and all(row[2] == "3,000" for row in lines)
    assert all(float(row[3].replace(",", "")) > 0 for row in lines)


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "synthetic", "--out", str(tmp_path / "x"), "--min-seq-length", "90"]) == 2
    assert "min_seq_length (90) exceeds seq_length (50)" in capsys.readouterr().err
    assert main(["data", "validate", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mdr: error: ") and "no dataset spec" in err and "Traceback" not in err
    assert main(["data", "synthetic", "--out", str(tmp_path / "y"), "--rows", "many"]) == 2
    assert "'rows' in command line: expected an integer, got 'many'" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "torchrec_mdr", "data", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for name in ("synthetic", "movielens", "taobao", "aliccp", "kuairand", "validate"):
        assert name in result.stdout
