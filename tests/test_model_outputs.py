"""ScoreModel accepts the output containers of other libraries: a ``.sample`` tensor or a tuple.

diffusers' UNets return ``UNet2DOutput(sample=...)`` (or ``(sample,)`` with ``return_dict=False``);
the wrapper takes the tensor out, and still refuses anything else with the accepted forms named.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from scoresde import EDMSDE, VPSDE, ScoreModel


@dataclass
class Output:  # the shape of diffusers' BaseOutput subclasses: a dataclass with a .sample tensor
    sample: torch.Tensor


@pytest.mark.parametrize("wrap", [lambda y: Output(y), lambda y: (y,), lambda y: [y, "extra"]], ids=["sample", "tuple", "list"])
@pytest.mark.parametrize("param", ["eps", "denoiser", "edm"])
def test_container_outputs_give_the_same_prediction_as_the_bare_tensor(wrap, param):
    sde = VPSDE() if param == "eps" else EDMSDE()
    net = lambda x, c: torch.sin(x) * (1.0 + c.reshape(-1, 1))
    x = torch.randn(4, 3, dtype=torch.float64)
    t = 0.4 if param == "eps" else 2.0
    bare = ScoreModel(net, sde, param)(x, t)
    boxed = ScoreModel(lambda x, c: wrap(net(x, c)), sde, param)(x, t)
    # The same tensor goes through the same arithmetic: bitwise equal.
    assert torch.equal(bare.x0, boxed.x0) and torch.equal(bare.eps, boxed.eps)


@pytest.mark.parametrize("out", [Output(sample=None), (), ("text",), {"sample": 1}], ids=["no-tensor", "empty", "str", "dict"])
def test_other_outputs_are_refused_with_the_accepted_forms(out):
    m = ScoreModel(lambda x, c: out, VPSDE(), "eps")
    with pytest.raises(ValueError, match=r"must return a tensor of x's shape \(2, 2\) \(or an object whose \.sample"):
        m(torch.zeros(2, 2), 0.5)
