import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # CI machines have 2 cores; small tensors run fastest on one thread.
    torch.set_num_threads(1)
    yield
