from pathlib import Path

import numpy as np
import pytest
import torch

from molsample.testing import random_orthogonal

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def aldp_conformations() -> np.ndarray:
    """240 alanine-dipeptide conformations, (240, 22, 3) nm (see fixtures/make_aldp_conformations.py)."""
    with np.load(FIXTURES / "aldp_conformations.npz") as d:
        return d["xyz"]


def random_rotation(generator: torch.Generator, dim: int = 3, dtype=torch.float64, reflect=False) -> torch.Tensor:
    return random_orthogonal(generator, dim, reflect=reflect, dtype=dtype)
