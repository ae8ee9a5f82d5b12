"""Networks: shapes, gradients, conditioning, per-sample independence, configs, embeddings, a few
training steps, errors."""

import json
import math

import pytest
import torch

from scoresde import VPSDE, ScoreModel
from scoresde.losses import dsm_loss
from scoresde.nets import MLP, NETS, FourierEmbedding, SinusoidalEmbedding, UNet, build_net

SMALL_UNET = dict(channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
CASES = {
    "mlp-2d": ("mlp", dict(dim=2, hidden=32, depth=2, emb_dim=16), (5, 2)),
    "unet-8x8": ("unet", dict(in_channels=1, resolution=8, **SMALL_UNET), (3, 1, 8, 8)),
    "unet-32x32": ("unet", dict(in_channels=3, resolution=32, channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                                attn_resolutions=(8,)), (2, 3, 32, 32)),
}


def _seeded(name, **kw):
    torch.manual_seed(0)
    return build_net(name, **kw)


@pytest.mark.parametrize("case", CASES)
def test_output_shape_equals_input_shape_and_gradients_flow(case):
    name, kw, shape = CASES[case]
    net = _seeded(name, **kw)
    x = torch.randn(shape, requires_grad=True)
    out = net(x, torch.rand(shape[0]))
    assert out.shape == x.shape
    out.square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert float(p.grad.abs().sum()) > 0, pname  # no dead parameter (no zero-initialised layers)


@pytest.mark.parametrize("case", CASES)
def test_samples_are_independent_of_the_batch(case):
    # No batch statistics (GroupNorm / LayerNorm only): sample i's output does not depend on the others.
    name, kw, shape = CASES[case]
    net = _seeded(name, **kw).double()
    x, c = torch.randn(shape, dtype=torch.float64), torch.rand(shape[0], dtype=torch.float64)
    full = net(x, c)
    assert torch.allclose(net(x[:1], c[:1]), full[:1], rtol=1e-12, atol=1e-12)  # float64, different reduction order


@pytest.mark.parametrize("name,kw,shape", [
    ("mlp", dict(dim=2, hidden=32, depth=2, emb_dim=16, num_classes=3), (4, 2)),
    ("unet", dict(resolution=8, num_classes=10, **SMALL_UNET), (4, 1, 8, 8)),
])
def test_class_conditioning_and_noise_level_change_the_output(name, kw, shape):
    net = _seeded(name, **kw)
    x, c = torch.randn(shape), torch.rand(shape[0])
    y0, y1 = torch.zeros(shape[0], dtype=torch.long), torch.ones(shape[0], dtype=torch.long)
    out0, out1, out_null = net(x, c, y=y0), net(x, c, y=y1), net(x, c)
    # Different labels, and the null label (y=None), give different outputs (not just round-off).
    assert (out0 - out1).abs().max() > 1e-4 and (out0 - out_null).abs().max() > 1e-4
    assert (net(x, c + 0.5, y=y0) - out0).abs().max() > 1e-4
    assert torch.equal(net(x, c, y=y0), out0)  # deterministic (dropout 0)


@pytest.mark.parametrize("case", CASES)
def test_config_is_plain_data_and_rebuilds_the_same_network(case):
    name, kw, shape = CASES[case]
    net = _seeded(name, **kw)
    cfg = json.loads(json.dumps(net.config()))
    again = build_net(name, **cfg)
    again.load_state_dict(net.state_dict())
    x, c = torch.randn(shape), torch.rand(shape[0])
    assert torch.equal(again(x, c), net(x, c))
    assert type(again) is NETS[name] and again.config() == cfg


def test_embeddings_by_hand():
    c = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    emb = SinusoidalEmbedding(4, scale=10.0, max_period=100.0).double()(c)
    # freqs = 100^(-k/2), k = 0, 1 -> 1, 0.1; args = 10 c freqs.
    want = torch.stack([torch.cos(10 * c), torch.cos(c), torch.sin(10 * c), torch.sin(c)], 1)
    assert torch.allclose(emb, want, rtol=1e-12, atol=1e-12)
    f1, f2 = FourierEmbedding(8, scale=16.0), FourierEmbedding(8, scale=16.0)
    assert torch.equal(f1.W, f2.W)  # drawn from a fixed seed: a rebuilt net has the same features
    e = f1(torch.tensor([0.3]))
    arg = 2 * math.pi * 0.3 * f1.W
    assert torch.allclose(e[0], torch.cat([torch.sin(arg), torch.cos(arg)]), rtol=1e-5, atol=1e-5)  # float32
    assert torch.equal(f1(torch.tensor(0.3), batch=2), e.expand(2, -1))  # a scalar broadcasts to the batch


@pytest.mark.parametrize("name,kw,shape,steps", [
    ("mlp", dict(dim=2, hidden=64, depth=2, emb_dim=32), (256, 2), 20),
    ("unet", dict(resolution=8, **SMALL_UNET), (32, 1, 8, 8), 10),
])
def test_a_few_adam_steps_reduce_the_dsm_loss_on_a_fixed_batch(name, kw, shape, steps):
    torch.manual_seed(0)
    net = build_net(name, **kw)
    model = ScoreModel(net, VPSDE(), "eps")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(shape, generator=g) * 0.3 + 0.5  # a narrow Gaussian: eps is partly predictable

    def loss():  # common random numbers: the same t and z every time, so the objective is fixed
        return dsm_loss(model, x0, generator=torch.Generator().manual_seed(2))

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    with torch.no_grad():
        first = float(loss())
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        last = float(loss())
    assert last < 0.8 * first, (first, last)


def test_unet_works_in_float64():
    net = _seeded("unet", resolution=8, **SMALL_UNET).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert net(x, torch.rand(2, dtype=torch.float64)).dtype == torch.float64


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="unknown net 'resnet'; accepted: mlp, unet"):
        build_net("resnet")
    with pytest.raises(ValueError, match="unknown option.*'width' for net 'mlp'; valid options:.*dim.*hidden"):
        build_net("mlp", dim=2, width=3)
    with pytest.raises(ValueError, match="net 'mlp' needs the option 'dim'"):
        build_net("mlp")
    with pytest.raises(ValueError, match="net 'mlp': hidden=12.5 is not accepted; accepted: an integer"):
        build_net("mlp", dim=2, hidden=12.5)
    with pytest.raises(ValueError, match="act='swish'.*'silu'"):
        MLP(2, act="swish")
    with pytest.raises(ValueError, match="embedding='rff'"):
        MLP(2, embedding="rff")
    with pytest.raises(ValueError, match=r"attn_resolutions=\(16,\).*never reaches.*\[8, 4, 2\]"):
        UNet(resolution=8, attn_resolutions=(16,))
    with pytest.raises(ValueError, match="resolution=12 must be divisible by.*8"):
        UNet(resolution=12, channel_mult=(1, 2, 2, 2), attn_resolutions=())
    with pytest.raises(ValueError, match="even integer"):
        SinusoidalEmbedding(5)
    net = UNet(resolution=8, **SMALL_UNET)
    with pytest.raises(ValueError, match=r"UNet needs x of shape \(B, 1, 8, 8\); got \(2, 1, 16, 16\)"):
        net(torch.randn(2, 1, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2), y=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"c_noise must be a scalar or a tensor of shape \(2,\)"):
        net(torch.randn(2, 1, 8, 8), torch.rand(3))
    mlp = MLP(3, num_classes=4)
    with pytest.raises(ValueError, match=r"MLP\(dim=3\) needs x of shape \(B, 3\)"):
        mlp(torch.randn(2, 2), torch.rand(2))
    with pytest.raises(ValueError, match=r"y must be an integer tensor of shape \(2,\)"):
        mlp(torch.randn(2, 3), torch.rand(2), y=torch.zeros(2))


def test_a_registered_user_network_is_built_by_name_and_rebuilt_from_its_config():
    from scoresde.nets import NETS, register_net

    class Tiny(torch.nn.Module):
        def __init__(self, dim: int, scale: float = 1.0):
            super().__init__()
            self.dim, self.scale = dim, scale
            self.lin = torch.nn.Linear(dim, dim)

        def forward(self, x, c_noise, **cond):
            return self.scale * self.lin(x)

        def config(self):
            return {"dim": self.dim, "scale": self.scale}

    with pytest.raises(TypeError, match="config"):
        register_net("tiny", torch.nn.Linear)
    register_net("tiny", Tiny)
    try:
        net = build_net("tiny", dim=3, scale=2.0)
        again = build_net("tiny", **net.config())
        assert isinstance(again, Tiny) and again.config() == {"dim": 3, "scale": 2.0}
        with pytest.raises(ValueError, match="already registered"):
            register_net("tiny", Tiny)
    finally:
        NETS.remove("tiny")
