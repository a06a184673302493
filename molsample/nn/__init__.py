"""Networks: step-conditioned drifts u(x, t, d)."""
from .drift import LangevinDrift, MLPCore, TimeStepEmbedding

__all__ = ["LangevinDrift", "MLPCore", "TimeStepEmbedding"]
