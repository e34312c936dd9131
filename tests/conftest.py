import os

import pytest
import torch

# Tests share two CPU cores with everything else; one thread is also the most reproducible.
torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
