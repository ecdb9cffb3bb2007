import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = ROOT.parent / "shared"

# Two cores on CI: keep every test on one intra-op thread unless it asks otherwise.
torch.set_num_threads(int(os.environ.get("GVF_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fixtures_dir():
    return FIXTURES


@pytest.fixture
def shared_assets():
    path = SHARED / "assets"
    if not path.is_dir():
        pytest.skip("../shared/assets is absent")
    return path
