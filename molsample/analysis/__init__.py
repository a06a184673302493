"""Observables, distances between distributions, reports."""
from .distances import energy_distance

__all__ = ["energy_distance"]
