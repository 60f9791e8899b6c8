"""Test-suite settings.

The models in the tests are small; one intra-op thread is as fast as two for them on the
2-core CI machines, and it keeps the suite's timing steady when other work shares the cores.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
