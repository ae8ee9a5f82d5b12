"""Frictions a new user met when bringing a model (issue 13): the device of a parameter-free model,
and a k-diffusion sigma list given as a schedule."""

from __future__ import annotations

import warnings

import pytest
import torch

import scoresde
from scoresde import EDMSDE, VPSDE, GaussianMixture
from scoresde.samplers.api import _model_device


def test_a_parameter_free_model_takes_the_device_of_its_cond_tensors():
    score = lambda x, t, y: -x  # a lambda-wrapped model: nothing to read a device from but its inputs
    meta = torch.empty(4, device="meta")
    assert _model_device(scoresde.ScoreModel(score, VPSDE()), {"y": meta}) == torch.device("meta")
    assert _model_device(scoresde.ScoreModel(score, VPSDE()), {"y": 3}) == torch.device("cpu")  # no tensor: the CPU
    # A model with parameters keeps its own device, whatever the cond tensors.
    net = torch.nn.Linear(2, 2)
    assert _model_device(scoresde.ScoreModel(net, VPSDE()), {"y": meta}) == torch.device("cpu")


def test_a_parameter_free_model_warns_when_cuda_is_there_and_it_would_run_on_the_cpu(monkeypatch):
    gm = GaussianMixture.ring(4, radius=2.0, std=0.3)
    model = scoresde.ScoreModel(lambda x, t: gm.score(x, t, VPSDE()), VPSDE())  # no parameters, no buffers
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as sample() can tell
    with pytest.warns(UserWarning, match="no parameters or buffers to take the device from .* pass device="):
        res = scoresde.sample(model, VPSDE(), (8, 2), "ddim", steps=3)
    assert res.x.device.type == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit device, or an x_T, says where: no warning
        scoresde.sample(model, VPSDE(), (8, 2), "ddim", steps=3, device="cpu")
        scoresde.sample(model, VPSDE(), (8, 2), "ddim", steps=3, x_T=torch.zeros(8, 2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CUDA: the CPU is the only choice, nothing to say
        scoresde.sample(model, VPSDE(), (8, 2), "ddim", steps=3)


@pytest.mark.parametrize("sde", [EDMSDE(), VPSDE()], ids=["edm", "vp"])
def test_a_sigma_list_ending_in_zero_is_refused_with_a_pointer_to_grid_from_sigmas(sde):
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002, 0.0])  # k-diffusion's get_sigmas_karras(...) shape
    with pytest.raises(ValueError, match=r"must lie in .*A k-diffusion sigma list\? .*grid_from_sigmas\(sde, sigmas\)"):
        scoresde.sample(lambda x, t: -x, sde, (4, 2), "heun", schedule=sigmas)
    with pytest.raises(ValueError) as err:  # another bad grid: no pointer
        scoresde.sample(lambda x, t: -x, sde, (4, 2), "heun", schedule=torch.tensor([0.5, 0.6, 0.7]))
    assert "grid_from_sigmas" not in str(err.value)
