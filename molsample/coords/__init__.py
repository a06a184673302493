"""Internal coordinates of bonded molecules: Z-matrix, bijection, whitening."""
from .transform import InternalCoordinates, angle, dihedral, place
from .zmatrix import ZMatrix, ZMatrixError, build_zmatrix

__all__ = ["InternalCoordinates", "ZMatrix", "ZMatrixError", "angle", "build_zmatrix", "dihedral", "place"]
