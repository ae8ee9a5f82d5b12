"""The quick-start job (`scoresde demo`): table, plot, sampler options, errors; a short training run."""

from __future__ import annotations

import re

import pytest

from scoresde.cli import main
from scoresde.commands.demo import _plan


def _rows(text):
    row = r"^\| (\S[^|]*?) +\| +(\S+) \| +(\d+) \| +([\d.]+) \| +([\d.]+) \|"  # label, steps, NFE, SW2, ratio
    return {m.group(1).strip(): m.groups()[1:] for m in re.finditer(row, text, re.M) if m.group(1).strip() != "sampler"}


def test_demo_exact_writes_table_and_plot(tmp_path, capsys):
    assert main(["demo", "--exact", "--out", str(tmp_path), "-n", "500", "--threads", "1",
                 "--samplers", "ddim:20,dpmpp_2m:10,pc:50:norm=batch,ode:0"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert list(rows) == ["ddim", "dpmpp_2m", "pc norm=batch", "ode"], out
    assert rows["ddim"][:2] == ("20", "21") and rows["dpmpp_2m"][:2] == ("10", "11")  # steps, NFE (final denoise)
    assert rows["pc norm=batch"][:2] == ("50", "101") and rows["ode"][0] == "adaptive"
    for name, (_, _, _, ratio) in rows.items():
        assert float(ratio) < 2.0, (name, out)  # the exact score: every sampler is near the floor
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "comparison.md").read_text().count("\n|") == 6  # header, rule, 4 rows


def test_demo_trains_a_model(tmp_path, capsys):
    # A short training run through the library's trainer; quality is tested in test_cli_train.py.
    assert main(["demo", "--out", str(tmp_path), "--train-steps", "30", "-n", "200", "--threads", "1",
                 "--samplers", "dpmpp_2m:5"]) == 0
    out = capsys.readouterr().out
    assert "trained an MLP score model for 30 steps" in out and "dpmpp_2m" in _rows(out)
    assert (tmp_path / "model" / "latest").exists()


def test_plan_parses_options_and_rejects_bad_items():
    assert _plan("ddim:20:eta=0.5,pc:0:norm=batch:snr=0.1") == [
        ("ddim eta=0.5", "ddim", 20, {"eta": 0.5}),
        ("pc norm=batch snr=0.1", "pc", 1000, {"norm": "batch", "snr": 0.1}),
    ]
    with pytest.raises(ValueError, match="STEPS must be an integer; got 'x'"):
        _plan("ddim:x")
    with pytest.raises(ValueError, match="options are KEY=VALUE; got 'eta'"):
        _plan("ddim:10:eta")
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        _plan("nope:10")
