import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads():
    # tests are small; more threads only add overhead on a 2-core machine
    torch.set_num_threads(1)
    yield
