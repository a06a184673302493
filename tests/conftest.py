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


@pytest.fixture(scope="session")
def aldp_md():
    """(target, internal coordinates, frames, log weights) of alanine dipeptide from the shipped 2 x 50 ns MD file."""
    from molsample.coords import InternalCoordinates
    from molsample.data import load_frames
    from molsample.targets import load_target
    cart = load_target("aldp")
    x, lw = load_frames(ROOT / "systems" / "aldp" / "reference" / "aldp_md_2x50ns.npz", cart)
    return cart, InternalCoordinates(cart.topology), x, lw


def random_rotation(generator: torch.Generator, dim: int = 3, dtype=torch.float64, reflect=False) -> torch.Tensor:
    return random_orthogonal(generator, dim, reflect=reflect, dtype=dtype)
