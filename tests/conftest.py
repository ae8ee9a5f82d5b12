import os

# The fused engine's Triton kernels are tested under Triton's CPU interpreter. Triton reads this when a
# kernel is decorated, and torch's inductor may import triton before the engine tests run, so it is set
# for the whole session before anything imports triton (export TRITON_INTERPRET=0 to test on a GPU).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # CI machines have 2 cores; small tensors run fastest on one thread.
    torch.set_num_threads(1)
    yield
