"""Target densities exp(-u(x)) / Z: OpenMM force fields, particle systems, analytic targets."""
from .analytic import Funnel, GaussianMixture, ManyWell, MultiWell
from .base import NoReferenceSamplerError, NonFinitePositionsError, Target, remove_com
from .forcefield import TorchForceField, UnsupportedForceError
from .openmm_target import OpenMMEvaluator, OpenMMTarget, SystemBuildError
from .particles import DoubleWell4, LennardJones
from .registry import load_target, system_files

__all__ = ["Target", "NoReferenceSamplerError", "NonFinitePositionsError", "remove_com", "TorchForceField",
           "UnsupportedForceError", "OpenMMTarget", "OpenMMEvaluator", "SystemBuildError", "LennardJones",
           "DoubleWell4", "GaussianMixture", "Funnel", "ManyWell", "MultiWell", "load_target", "system_files"]
