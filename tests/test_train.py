"""The trainer: exact resume, data order, LR warm-up, EMA and clipping by hand, snapshots, errors, DDP."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.checkpoint import load_checkpoint
from scoresde.data import load_dataset
from scoresde.model import ScoreModel
from scoresde.nets import build_net
from scoresde.sde import VPSDE
from scoresde.train import TrainConfig, Trainer, global_batch, save_sample_figure, train_points

GMM = load_dataset("gmm", n=1024, seed=0)


def _trainer(out=None, *, dropout=0.0, **cfg):
    torch.manual_seed(0)
    net = build_net("mlp", dim=2, hidden=16, depth=2, emb_dim=16, dropout=dropout)
    kw = dict(steps=20, batch_size=64, lr=3e-3, warmup=5, log_every=5, ckpt_every=7, progress=False, verbose=False)
    kw.update(cfg)
    return Trainer(ScoreModel(net, VPSDE(), "eps"), GMM, TrainConfig(**kw), out=out)


def _assert_same_training_state(a: Trainer, b: Trainer) -> None:
    for (k, v), (k2, v2) in zip(a.net.state_dict().items(), b.net.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), f"net {k}"
    for (k, v), (k2, v2) in zip(a.ema.state_dict().items(), b.ema.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), f"ema {k}"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for pid in sa["state"]:
        for key in sa["state"][pid]:
            assert torch.equal(sa["state"][pid][key], sb["state"][pid][key]), f"optimizer {pid}.{key}"
    assert a.history == b.history and a.step == b.step
    assert torch.equal(a.loss_gen.get_state(), b.loss_gen.get_state())


def test_resume_is_bit_identical(tmp_path):
    # Dropout makes the global RNG part of the state; ckpt_every=7 is not a multiple of log_every=5,
    # so the loss-history windows are cut by checkpoints (they must be cut the same way on resume).
    full = _trainer(tmp_path / "full", dropout=0.1)
    full.fit()
    part = _trainer(tmp_path / "part", dropout=0.1, steps=14)
    part.fit()
    del part
    resumed = Trainer.resume(tmp_path / "part", steps=20)
    assert resumed.step == 14
    resumed.fit()
    _assert_same_training_state(full, resumed)
    # and a run that skipped restoring the RNG states would not match (the test can fail)
    other = _trainer(tmp_path / "other", dropout=0.1, steps=14)
    other.fit()
    ck = load_checkpoint(tmp_path / "other", ema=False)
    ck.state["rng"] = {}
    with pytest.warns(UserWarning, match="not bit-identical"):
        other.load_state(ck)
    other.config.steps = 20
    other.fit()
    assert not torch.equal(next(other.net.parameters()), next(full.net.parameters()))


def test_global_batch_is_an_epoch_permutation_split_across_ranks():
    n, B, seed = 100, 16, 3
    per_epoch = n // B  # 6 batches; the last 4 examples of each epoch's permutation are dropped
    epoch0 = torch.cat([global_batch(s, n, B, seed) for s in range(per_epoch)])
    assert len(set(epoch0.tolist())) == per_epoch * B  # no repeats within an epoch
    assert not torch.equal(global_batch(0, n, B, seed), global_batch(per_epoch, n, B, seed))  # new epoch, new order
    assert torch.equal(global_batch(7, n, B, seed), global_batch(7, n, B, seed))  # a pure function of the step
    # what _batch gives rank r of 2 is slice r of the global batch: the two slices make up the 1-process batch
    tr = _trainer()
    idx = global_batch(4, GMM.x.shape[0], 64, tr.config.seed)
    x_one, _ = tr._batch(4)
    assert torch.equal(x_one, GMM.x[idx])
    halves = []
    for rank in (0, 1):
        tr.rank, tr.world = rank, 2
        halves.append(tr._batch(4)[0])
    assert torch.equal(torch.cat(halves), x_one)


def test_warmup_lr_ema_and_clipping_by_hand():
    steps, lr, warmup, decay, clip = 6, 1e-2, 4, 0.9, 1e-3
    tr = _trainer(steps=steps, lr=lr, warmup=warmup, ema_decay=decay, grad_clip=clip, ckpt_every=0)
    params = [p.detach().clone() for p in tr.net.parameters()]
    ema = [p.clone() for p in params]
    for s in range(steps):
        tr.train_step()
        # linear warm-up: lr_s = lr * min(1, (s + 1) / warmup)
        assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(lr * min(1.0, (s + 1) / warmup), rel=1e-15)
        if s == 0:
            # Adam's first moment after one step is (1 - beta1) g; clipping makes ||g|| = clip exactly
            # (the raw gradient of a fresh net is far larger than 1e-3). float32 sums: rel 1e-5.
            m = torch.cat([st["exp_avg"].flatten() for st in tr.optimizer.state.values()])
            assert float(m.norm()) == pytest.approx(0.1 * clip, rel=1e-5)
        # EMA with the warm-up decay min(decay, (1 + s) / (10 + s)), applied after the step
        d = min(decay, (1 + s) / (10 + s))
        ema = [e + (1 - d) * (p.detach() - e) for e, p in zip(ema, tr.net.parameters(), strict=True)]
    for e, p in zip(ema, tr.ema.parameters(), strict=True):
        # lerp vs the written formula differ in float32 rounding only
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-7)


def test_snapshots_and_figures(tmp_path):
    tr = _trainer(tmp_path / "run", steps=4, snapshot_every=4, snapshot_steps=5, snapshot_n=50, ckpt_every=0)
    tr.fit()
    png = tmp_path / "run" / "snapshots" / "step-0000004.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    images = torch.rand(10, 1, 8, 8)
    assert save_sample_figure(images, tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"


def test_unet_on_digits_trains_and_resumes(tmp_path):
    digits = load_dataset("digits", n=64, seed=0)
    torch.manual_seed(0)

    def make(steps):
        net = build_net("unet", in_channels=1, channels=8, channel_mult=[1, 2], num_res_blocks=1,
                        attn_resolutions=[4], resolution=8, dropout=0.1)
        cfg = TrainConfig(steps=steps, batch_size=16, progress=False, verbose=False, ckpt_every=2, log_every=1)
        return Trainer(ScoreModel(net, VPSDE(), "eps"), digits, cfg, out=tmp_path / f"u{steps}")

    torch.manual_seed(0)
    a = make(4)
    a.fit()
    torch.manual_seed(0)
    b = make(2)
    b.fit()
    b = Trainer.resume(tmp_path / "u2", steps=4)
    b.fit()
    _assert_same_training_state(a, b)
    assert load_checkpoint(tmp_path / "u4").data_shape == (1, 8, 8)

    # `scoresde sample` on the image checkpoint: the .npz holds scaler.from_model of what sample() gives
    from scoresde import sample
    from scoresde.checkpoint import load_model
    from scoresde.cli import main
    from scoresde.random import make_seeds

    npz, png = tmp_path / "d.npz", tmp_path / "d.png"  # the PNG goes next to the .npz by default
    assert main(["sample", "--checkpoint", str(tmp_path / "u4"), "--sampler", "ddim", "--steps", "3", "-n", "6",
                 "--seed", "4", "--out", str(npz)]) == 0
    model, sde, scaler = load_model(tmp_path / "u4")
    seeds = make_seeds(6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = scaler.from_model(sample(model, sde, (6, 1, 8, 8), "ddim", 3, seeds=seeds).x)
    with np.load(npz, allow_pickle=False) as z:
        assert torch.equal(torch.from_numpy(z["samples"]), want) and torch.equal(torch.from_numpy(z["seeds"]), seeds)
    assert png.read_bytes()[:4] == b"\x89PNG"
    npz2 = tmp_path / "e.npz"
    assert main(["sample", "--checkpoint", str(tmp_path / "u4"), "--sampler", "ddim", "--steps", "3", "-n", "2",
                 "--out", str(npz2), "--no-png"]) == 0
    assert npz2.exists() and not (tmp_path / "e.png").exists()


def test_train_points_returns_an_ema_model():
    model = train_points(GMM.x[:256], VPSDE(), steps=3, batch_size=64, hidden=16, depth=1, progress=False)
    assert isinstance(model, ScoreModel) and model.parameterization == "eps"
    assert model(torch.zeros(4, 2), 0.5).eps.shape == (4, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(amp="bf16"), "amp='bf16' needs a CUDA device"),
        (dict(amp="fp8"), "amp='fp8' is not accepted; accepted: 'none', 'bf16', 'fp16'"),
        (dict(batch_size=4096), "batch_size=4096 is larger than the data set"),
        (dict(steps=0), "steps=0 is not accepted; accepted: an integer >= 1"),
        (dict(steps=2.5), "steps=2.5 is not accepted; accepted: an integer >= 1"),
        (dict(ema_decay=1.0), "ema_decay=1.0 is not accepted; accepted: a finite number >= 0 and < 1"),
        (dict(lr=-1.0), "lr=-1.0 is not accepted; accepted: a finite number > 0"),
        (dict(loss="nope"), "unknown loss 'nope'; accepted: dsm, ncsn, edm"),
        (dict(loss_kwargs={"weighting": "bad"}), "weighting='bad' is not accepted"),
    ],
)
def test_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tr = _trainer(**kwargs)
        tr.fit()


# ------------------------------------------------------------------------------------- data parallel
def test_two_process_run_matches_one_process_loss_curve(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) on the same global batch as one process.

    The loss noise (t, eps) is drawn per process, so the curves agree within noise, not bit for
    bit. Tolerance: each 15-step window mean may differ by 5 standard errors of a difference of
    two window means, the per-step loss noise sigma being measured on the one-process run from
    successive differences (sigma = std(diff) / sqrt(2)): tol = 5 sqrt(2) sigma / sqrt(15). The
    worker also asserts that both ranks end with identical weights (gradients were averaged).
    """
    sys.path.insert(0, str(Path(__file__).parent))
    import _ddp_worker

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _ddp_worker.main(str(tmp_path / "one"))
    from _torchrun import torchrun

    torchrun(str(Path(__file__).parent / "_ddp_worker.py"), str(tmp_path / "two"))
    one = json.loads((tmp_path / "one" / "history.json").read_text())
    two = json.loads((tmp_path / "two" / "history.json").read_text())
    assert one["world"] == 1 and two["world"] == 2
    a = torch.tensor([h[1] for h in one["history"]], dtype=torch.float64)
    b = torch.tensor([h[1] for h in two["history"]], dtype=torch.float64)
    assert a.shape == b.shape == (60,)
    sigma = float(torch.diff(a).std()) / math.sqrt(2)
    tol = 5 * math.sqrt(2) * sigma / math.sqrt(15)
    wa, wb = a.reshape(4, 15).mean(1), b.reshape(4, 15).mean(1)
    assert (wa - wb).abs().max() < tol, (wa, wb, tol)
    assert wa[0] - wa[-1] > 4 * tol  # the loss falls far more than the tolerance: the comparison has teeth
    # rank 0 wrote a checkpoint that loads; the step folder holds the full run
    ck = load_checkpoint(tmp_path / "two")
    assert ck.step == 60 and ck.config["world_size"] == 2 and len(ck.state["rng"]["loss"]) == 2
