"""CLI errors are one line and exit 2 (never a traceback), and are raised before any work is done."""

from __future__ import annotations

import pytest

from scoresde.cli import main


@pytest.fixture()
def afile(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    return f


def _one_line_error(capsys, argv, needle):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and needle in err, err


@pytest.mark.parametrize("where", ["is", "under"])
def test_out_that_is_a_file_or_under_a_file_is_one_line_exit_2(tmp_path, afile, capsys, where):
    folder = afile if where == "is" else afile / "sub"
    needle = "is a file" if where == "is" else "which is a file"
    _one_line_error(capsys, ["train", "--data", "moons", "--out", folder, "--steps", 1], needle)
    _one_line_error(capsys, ["bench", "--quick", "--out", folder], needle)
    _one_line_error(capsys, ["demo", "--out", folder, "--train-steps", 1], needle)
    if where == "under":  # the two file-writing commands: a file name under a file
        _one_line_error(capsys, ["sample", "--checkpoint", tmp_path, "--out", afile / "x.npz"], "is a file")
        _one_line_error(capsys, ["likelihood", "--checkpoint", tmp_path, "--data", afile, "--out", afile / "x" / "r.json"],
                        "which is a file")
    else:  # a file name that is a folder
        _one_line_error(capsys, ["likelihood", "--checkpoint", tmp_path, "--data", afile, "--out", tmp_path],
                        "is a folder")


@pytest.mark.parametrize("device,needle", [("tpu", "device='tpu' is not a device torch knows"),
                                           ("cuda:7", "CUDA is not available"), ("nonsense", "not a device torch knows")])
def test_bad_device_is_one_line_exit_2(tmp_path, capsys, device, needle):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _one_line_error(capsys, ["train", "--data", "moons", "--out", tmp_path / "r", "--steps", 1, "--device", device],
                    needle)


def test_likelihood_limit_must_not_be_negative(tmp_path, afile, capsys):
    _one_line_error(capsys, ["likelihood", "--checkpoint", tmp_path, "--data", afile, "--limit", -1],
                    "--limit must be >= 0")


def test_bench_steps_zero_and_typo_only_sweeps_are_errors(tmp_path, capsys):
    _one_line_error(capsys, ["bench", "--out", tmp_path / "b", "--steps", "0", "--samplers", "ddim"],
                    "steps must be positive integers")
    _one_line_error(capsys, ["bench", "--out", tmp_path / "b", "--steps", "5", "--samplers", "ddmi"],
                    "the sweep has no cell to run")
