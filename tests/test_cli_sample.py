"""``scoresde sample``: --seeds ranges, --class / --guidance (per-class grids, CFG), --png-dir export, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scoresde import sample
from scoresde.checkpoint import load_checkpoint
from scoresde.cli import main
from scoresde.commands.sample import parse_int_list
from scoresde.guidance import ClassifierFreeGuidance
from scoresde.plots import save_image_pngs, to_uint8

MLP = '{"hidden": 16, "depth": 1}'
UNET = '{"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]}'


def _cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny checkpoints (2 training steps: the tests check plumbing and exact equalities, not quality)."""
    root = tmp_path_factory.mktemp("runs")
    common = ["--steps", 2, "--quiet", "--no-progress", "--threads", 1]
    pts = ["train", "--data", "gmm", "--n-data", 256, "--net", "mlp", "--net-kwargs", MLP, "--batch-size", 64, *common]
    assert _cli(*pts, "--conditional", "--label-dropout", 0.2, "--out", root / "cfg") == 0
    assert _cli(*pts, "--conditional", "--out", root / "cond") == 0  # no label dropout
    assert _cli(*pts, "--out", root / "plain") == 0
    assert _cli("train", "--data", "digits", "--n-data", 64, "--net", "unet", "--net-kwargs", UNET, "--batch-size", 16,
                *common, "--conditional", "--label-dropout", 0.2, "--out", root / "digits") == 0
    return root


def _load(npz):
    with np.load(npz, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_parse_int_list_is_edm_syntax():
    assert parse_int_list("0-63", "--seeds") == list(range(64))
    assert parse_int_list("0,5,7-9", "--seeds") == [0, 5, 7, 8, 9]
    assert parse_int_list(" 3 ", "--seeds") == [3] and parse_int_list("4-4", "--seeds") == [4]
    for bad in ("5-2", "a", "", "-1", "1-", "1,,2", "0-3-5", "2.5"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_int_list(bad, "--seeds")


def test_seeds_are_the_per_sample_seeds(runs, tmp_path):
    out = tmp_path / "s.npz"
    assert _cli("sample", "--checkpoint", runs / "plain", "--sampler", "ddim", "--steps", 4, "--seeds", "0,5,7-9",
                "--out", out, "--no-png") == 0
    z = _load(out)
    assert z["seeds"].tolist() == [0, 5, 7, 8, 9] and z["samples"].shape == (5, 2)
    ck = load_checkpoint(runs / "plain")
    with torch.no_grad():
        want = ck.scaler.from_model(sample(ck.model, ck.sde, (5, 2), "ddim", 4, seeds=torch.tensor([0, 5, 7, 8, 9])).x)
    assert torch.equal(torch.from_numpy(z["samples"]), want.float())
    # sample i depends on its seed only: --seeds 7-8 gives the rows of seeds 7 and 8 (another batch size may
    # round the matmuls differently: float32 agreement to 1e-5, not bits)
    out2 = tmp_path / "s2.npz"
    assert _cli("sample", "--checkpoint", runs / "plain", "--sampler", "ddim", "--steps", 4, "--seeds", "7-8",
                "--out", out2, "--no-png") == 0
    np.testing.assert_allclose(_load(out2)["samples"], z["samples"][2:4], rtol=0, atol=1e-5)
    assert json.loads(str(z["meta"]))["seeds"] == "0,5,7-9"


def test_class_and_guidance_write_a_grid_per_class_and_equal_the_front_door(runs, tmp_path):
    out = tmp_path / "g.npz"
    assert _cli("sample", "--checkpoint", runs / "cfg", "--sampler", "dpmpp_2m", "--steps", 5, "--class", "0,2",
                "--seeds", "0-3", "--guidance", 2, "--out", out) == 0
    z = _load(out)
    assert z["labels"].tolist() == [0] * 4 + [2] * 4 and z["seeds"].tolist() == [0, 1, 2, 3] * 2
    meta = json.loads(str(z["meta"]))
    assert meta["classes"] == [0, 2] and meta["guidance"] == {"method": "cfg", "w": 2.0}
    assert meta["nfe_per_batch"] == [2 * (5 + 1)]  # 5 steps + the final denoising, 2 evaluations each
    for png in ("g.png", "g-class0.png", "g-class2.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png
    ck = load_checkpoint(runs / "cfg")
    y, seeds = torch.tensor(z["labels"]), torch.tensor(z["seeds"])
    with torch.no_grad():
        want = sample(ck.model, ck.sde, (8, 2), "dpmpp_2m", 5, seeds=seeds, cond={"y": y},
                      guidance=ClassifierFreeGuidance(2.0)).x
        cond_only = sample(ck.model, ck.sde, (8, 2), "dpmpp_2m", 5, seeds=seeds, cond={"y": y}).x
    assert torch.equal(torch.from_numpy(z["samples"]), ck.scaler.from_model(want).float())
    assert not torch.equal(want, cond_only)  # the guidance changed the samples
    # w = 0 is the conditional model itself (1 NFE per evaluation), bit for bit
    out0 = tmp_path / "g0.npz"
    assert _cli("sample", "--checkpoint", runs / "cfg", "--sampler", "dpmpp_2m", "--steps", 5, "--class", "0,2",
                "--seeds", "0-3", "--guidance", 0, "--out", out0, "--no-png") == 0
    z0 = _load(out0)
    assert torch.equal(torch.from_numpy(z0["samples"]), ck.scaler.from_model(cond_only).float())
    assert json.loads(str(z0["meta"]))["nfe_per_batch"] == [6]
    # --class all: every class, -n samples each; w = 0 is accepted on a model without label dropout
    outa = tmp_path / "a.npz"
    assert _cli("sample", "--checkpoint", runs / "cond", "--sampler", "ddim", "--steps", 2, "--class", "all", "-n", 3,
                "--guidance", 0, "--out", outa, "--no-png") == 0
    assert _load(outa)["labels"].tolist() == [k for k in range(5) for _ in range(3)]


def test_png_dir_writes_one_png_per_sample(runs, tmp_path):
    from PIL import Image

    out, pngs = tmp_path / "d.npz", tmp_path / "pngs"
    assert _cli("sample", "--checkpoint", runs / "digits", "--sampler", "ddim", "--steps", 3, "--class", "1,7",
                "-n", 3, "--guidance", 1.5, "--out", out, "--png-dir", pngs) == 0
    z = _load(out)
    files = sorted(p.name for p in pngs.iterdir())
    assert files == [f"{i:06d}.png" for i in range(6)]  # no temp files left behind
    # pixel i = the .npz's data-space sample i (digits: 0..16) mapped to 0..255
    want = to_uint8(torch.from_numpy(z["samples"]), (0.0, 16.0))
    for i, name in enumerate(files):
        with Image.open(pngs / name) as im:
            assert im.mode == "L" and im.size == (8, 8)
            assert torch.equal(torch.from_numpy(np.array(im)), want[i, 0]), name
    # the mapping by hand: lo -> 0, hi -> 255, the midpoint 127.5 -> 128 (ties to even), clipped outside
    x = torch.tensor([0.0, 16.0, 8.0, -3.0, 99.0, 4.0]).reshape(1, 1, 2, 3)
    assert to_uint8(x, (0.0, 16.0)).flatten().tolist() == [0, 255, 128, 0, 255, 64]
    # RGB round trip
    rgb = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    paths = save_image_pngs(rgb, tmp_path / "rgb", value_range=(0.0, 1.0), names=["a.png", "b.png"])
    with Image.open(paths[1]) as im:
        assert im.mode == "RGB" and torch.equal(torch.from_numpy(np.array(im)).permute(2, 0, 1),
                                                to_uint8(rgb, (0.0, 1.0))[1])


@pytest.mark.parametrize(
    "run, args, needle",
    [
        ("cfg", ["--class", "5"], "--class 5: class 5 is out of range; this model has classes 0..4"),
        ("cfg", ["--class", "0,9"], "class 9 is out of range"),
        ("cfg", ["--class", "x"], "--class must be integers and ranges"),
        ("cfg", ["--guidance", "nan"], "--guidance must be a finite number >= 0"),
        ("cfg", ["--guidance", "-1"], "--guidance must be a finite number >= 0"),
        ("cfg", ["--guidance", "inf"], "--guidance must be a finite number >= 0"),
        ("cfg", ["--guidance", "three"], "--guidance must be a finite number >= 0"),
        ("plain", ["--guidance", "3"], "--guidance 3 needs a class-conditional model"),
        ("plain", ["--class", "1"], "holds an unconditional model"),
        ("cond", ["--guidance", "3"], "trained with label_dropout=0"),
        ("cfg", ["--class", "1", "--label", "1"], "give --class or --label, not both"),
        ("cfg", ["--seeds", "3-1"], "--seeds: '3-1' is not a range"),
        ("cfg", ["--seeds", "0-3", "-n", "5"], "-n 5 disagrees with --seeds '0-3' (4 seeds)"),
        ("cfg", ["--seeds", "0-3", "--seed", "1"], "give --seed"),
        ("cfg", ["--png-dir", "pngs"], "--png-dir writes images"),
    ],
)
def test_bad_input_is_one_line_exit_2(runs, tmp_path, capsys, run, args, needle):
    rc = _cli("sample", "--checkpoint", runs / run, "--steps", 2, "--out", tmp_path / "x.npz", *args)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "x.npz").exists()


def test_torchrun_two_processes_write_the_one_process_file(runs, tmp_path):
    # Under torchrun each rank samples every world-th seed and rank 0 gathers them in seed order: the
    # file equals one process's, bit for bit (per-sample seeds; 2 processes, gloo on the CPU). The batch
    # size is fixed (7 = each rank's share): a float32 matmul's rows can differ in the last bit with
    # the batch size (measured 3e-8 relative at 14 vs 7), which is the BLAS, not the sharding.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _torchrun import torchrun

    args = ["sample", "--checkpoint", runs / "cfg", "--sampler", "euler_ancestral", "--steps", 4, "--seeds", "0-6",
            "--class", "0,2", "--guidance", 1.5, "--no-png", "--threads", 1, "--device", "cpu", "--batch-size", 7]
    assert _cli(*args, "--out", tmp_path / "one.npz") == 0
    torchrun("-m", "scoresde", *map(str, args), "--out", str(tmp_path / "two.npz"))
    one, two = _load(tmp_path / "one.npz"), _load(tmp_path / "two.npz")
    for key in ("samples", "seeds", "labels"):
        assert np.array_equal(one[key], two[key]), key
    assert json.loads(str(two["meta"]))["n"] == 14
