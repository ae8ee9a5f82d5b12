"""The examples of docs/byo-model.md run as written (randomly initialised networks, no downloads)."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch
from _peers import require

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "byo-model.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_page_has_one_example_per_adapter():
    text = "\n".join(BLOCKS)
    for name in ("from_diffusers", "from_k_diffusion", "from_score_sde", "from_edm", "to_k_diffusion", "to_diffusers"):
        assert f"{name}(" in text, name


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_example_runs(i, capsys):
    require("diffusers")
    require("torchsde")
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(BLOCKS[i], f"{DOC.name} block {i}", "exec"), namespace)  # noqa: S102 - our own documentation
    out = capsys.readouterr().out
    # Printed NFE in the examples are stated in their comments: check them.
    for printed, stated in zip(re.findall(r"^(\d+)$", out, flags=re.M), re.findall(r"print\(res\.nfe\)\s+# (\d+)", BLOCKS[i]),
                               strict=True):
        assert printed == stated
    if "ours = " in BLOCKS[i]:  # the other direction: k-diffusion's heun equals scoresde's
        assert float((namespace["ours"] - namespace["x_kd"]).abs().max()) < 1e-4  # float32 samples of scale 2
        assert namespace["images"].shape == (4, 1, 1, 2)
