"""Internal coordinates of bonded molecules: Z-matrix, bijection, structured base, one-step maps (an MLP or a graph
network over the molecule), the model and its training."""
from .transform import InternalCoordinates, angle, dihedral, place
from .zmatrix import ZMatrix, ZMatrixError, build_zmatrix

__all__ = ["InternalCoordinates", "ZMatrix", "ZMatrixError", "angle", "build_zmatrix", "dihedral", "place"]
