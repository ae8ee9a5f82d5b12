"""Training for classifier-free guidance: label dropout (rate, exact resume, the null label learns the
unconditional score) and its errors."""

from __future__ import annotations

import math

import pytest
import torch

from scoresde.checkpoint import load_checkpoint
from scoresde.data import load_dataset
from scoresde.exact import ClassConditionalMixture
from scoresde.model import ScoreModel
from scoresde.nets import build_net
from scoresde.sde import VPSDE
from scoresde.train import TrainConfig, Trainer

GMM = load_dataset("gmm", n=4096, seed=0)  # 5 components; label = component
C = 5  # classes 0..4, null label 5


def _trainer(out=None, *, hidden=16, emb_dim=16, dropout=0.0, cond=True, **cfg):
    torch.manual_seed(0)
    net = build_net("mlp", dim=2, hidden=hidden, depth=2, emb_dim=emb_dim, dropout=dropout,
                    num_classes=C if cond else None)
    kw = dict(steps=20, batch_size=64, lr=3e-3, warmup=5, log_every=5, ckpt_every=7, progress=False, verbose=False)
    kw.update(cfg)
    return Trainer(ScoreModel(net, VPSDE(), "eps"), GMM, TrainConfig(**kw), out=out)


def _seen_labels(tr: Trainer, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels the network received, labels of the data batch) over ``steps`` training steps."""
    seen, data = [], []
    hook = tr.net.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["y"].clone()),
                                            with_kwargs=True)
    try:
        for _ in range(steps):
            data.append(tr._batch(tr.step)[1]["y"])
            tr.train_step()
    finally:
        hook.remove()
    return torch.cat(seen), torch.cat(data)


def test_label_dropout_rate_and_the_null_label():
    p, steps = 0.3, 40
    tr = _trainer(label_dropout=p, batch_size=256)
    seen, data = _seen_labels(tr, steps)
    n = seen.numel()  # 10240 labels
    dropped = seen == C
    # a label is either kept exactly or replaced by the null label C, never anything else
    assert torch.equal(seen[~dropped], data[~dropped]) and not bool((data == C).any())
    # the dropped fraction is Binomial(n, p) / n: within 4 standard deviations (sd = 0.0045 here)
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(float(dropped.double().mean()) - p) < 4 * sd, float(dropped.double().mean())
    # independent of the class: each class's dropped fraction within 4 sd of its own count
    for k in range(C):
        m = data == k
        assert abs(float(dropped[m].double().mean()) - p) < 4 * math.sqrt(p * (1 - p) / int(m.sum())), k
    # p = 1: every label is the null label; p = 0: none, and no draw (the loss stream is untouched)
    assert bool((_seen_labels(_trainer(label_dropout=1.0), 3)[0] == C).all())
    a, b = _trainer(label_dropout=0.0), _trainer()
    seen0, data0 = _seen_labels(a, 3)
    assert torch.equal(seen0, data0)
    b.fit()  # 20 steps
    a.fit()
    assert torch.equal(a.loss_gen.get_state(), b.loss_gen.get_state())


def test_the_dropout_draw_comes_from_the_seeded_loss_generator():
    # the same seed gives the same masks whatever torch's global RNG holds; another seed other masks
    a = _trainer(label_dropout=0.5)
    torch.manual_seed(123)
    sa, _ = _seen_labels(a, 5)
    b = _trainer(label_dropout=0.5)
    torch.manual_seed(456)
    sb, _ = _seen_labels(b, 5)
    assert torch.equal(sa, sb)
    sc, _ = _seen_labels(_trainer(label_dropout=0.5, seed=1), 5)
    assert not torch.equal(sa == C, sc == C)


def test_resume_with_label_dropout_is_bit_identical(tmp_path):
    from test_train import _assert_same_training_state

    full = _trainer(tmp_path / "full", label_dropout=0.3, dropout=0.1)
    full.fit()
    part = _trainer(tmp_path / "part", label_dropout=0.3, dropout=0.1, steps=14)
    part.fit()
    del part
    resumed = Trainer.resume(tmp_path / "part", steps=20)
    assert resumed.step == 14 and resumed.config.label_dropout == 0.3 and resumed.null_label == C
    resumed.fit()
    _assert_same_training_state(full, resumed)
    cfg = load_checkpoint(tmp_path / "full").config
    assert cfg["train"]["label_dropout"] == 0.3 and cfg["null_label"] == C and cfg["conditional"] is True
    # the dropout changed the training (the test above compares two dropout runs, not two plain ones)
    plain = _trainer(label_dropout=0.0, dropout=0.1, ckpt_every=0)
    plain.fit()
    assert not torch.equal(next(plain.net.parameters()), next(full.net.parameters()))


def test_null_label_learns_the_unconditional_score():
    """A conditional MLP trained with label dropout 0.2 (600 steps, ~2 s): at three noise levels its
    null-label eps is close to the EXACT unconditional eps of the mixture, and its class-0 eps to the
    exact class-0 eps; without dropout (the null label never trained) the null-label output is not.

    Measure: mean squared eps error over x ~ p_t, divided by the squared gap between the exact
    class-0 and exact unconditional eps (what an output that ignored the null label would be off by).
    Measured with dropout: null 0.049, 0.012, 0.029 and class 0 0.080, 0.018, 0.017 at t = 0.05, 0.2,
    0.5; without dropout (300 steps): null 0.79, 0.99, 4.1. The bound 0.15 is 1.9x above the worst
    dropout value and 5x below the best no-dropout one; 0.5 is 1.6x below that.
    """
    sde = VPSDE()
    ccm = ClassConditionalMixture(GMM.exact, labels=list(range(C)))
    assert ccm.null_label == C

    def ratios(p: float, steps: int) -> tuple[list[float], list[float]]:
        tr = _trainer(hidden=64, emb_dim=128, label_dropout=p, steps=steps, batch_size=256, warmup=50, ckpt_every=0)
        tr.fit()
        model, g = tr.ema_model(), torch.Generator().manual_seed(1)
        null, zero = torch.full((4000,), C), torch.zeros(4000, dtype=torch.long)
        r_null, r_cond = [], []
        for t in (0.05, 0.2, 0.5):
            x0 = GMM.exact.sample(4000, generator=g).float()
            a, s = float(sde.alpha(torch.tensor(t))), float(sde.sigma(torch.tensor(t)))
            xt = a * x0 + s * torch.randn(x0.shape, generator=g)
            with torch.no_grad():
                e_null, e_0 = model(xt, t, y=null).eps.double(), model(xt, t, y=zero).eps.double()
            ex_u, ex_0 = -s * ccm.score(xt.double(), t, sde, null), -s * ccm.score(xt.double(), t, sde, zero)
            gap = float(((ex_0 - ex_u) ** 2).sum(1).mean())
            r_null.append(float(((e_null - ex_u) ** 2).sum(1).mean()) / gap)
            r_cond.append(float(((e_0 - ex_0) ** 2).sum(1).mean()) / gap)
        return r_null, r_cond

    r_null, r_cond = ratios(0.2, 600)
    assert max(r_null) < 0.15 and max(r_cond) < 0.15, (r_null, r_cond)
    r_null0, _ = ratios(0.0, 300)
    assert min(r_null0) > 0.5, r_null0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(label_dropout=1.5), r"label_dropout=1.5 is not accepted; accepted: a finite number >= 0 and <= 1"),
        (dict(label_dropout=-0.1), r"label_dropout=-0.1 is not accepted"),
        (dict(label_dropout=float("nan")), r"label_dropout=nan is not accepted"),
        (dict(label_dropout=0.1, cond=False), r"label_dropout=0.1 needs class-conditional training"),
    ],
)
def test_label_dropout_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _trainer(**kwargs)
