"""Build starting structures from internal coordinates.

The alanine dipeptide PDB shipped in ``systems/aldp`` was produced by
:func:`build_alanine_dipeptide`: heavy atoms placed from standard peptide geometry
(natural extension reference frame), hydrogens added by OpenMM's ``Modeller`` with the
AMBER templates, then a local energy minimisation in the target force field.
"""
from __future__ import annotations

import numpy as np


def place_atom(a: np.ndarray, b: np.ndarray, c: np.ndarray, bond: float, angle: float,
               torsion: float) -> np.ndarray:
    """Position of atom D from A, B, C with |CD| = bond, angle BCD and torsion ABCD (degrees).

    Parameters
    ----------
    a, b, c : ndarray, shape (3,), any length unit
    bond : float, same length unit
    angle, torsion : float, degrees
    """
    angle, torsion = np.deg2rad(angle), np.deg2rad(torsion)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(torsion),
                   bond * np.sin(angle) * np.sin(torsion)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def _dipeptide_heavy_atoms(phi: float, psi: float) -> list[tuple[str, str, str, np.ndarray]]:
    """(residue, atom name, element, position in nm) of ACE-ALA-NME heavy atoms."""
    ch3 = np.array([0.0, 0.0, 0.0])
    c0 = np.array([0.152, 0.0, 0.0])
    o0 = place_atom(np.array([0.0, 1.0, 0.0]), ch3, c0, 0.123, 121.0, 0.0)
    n1 = place_atom(o0, ch3, c0, 0.133, 116.0, 180.0)
    ca = place_atom(ch3, c0, n1, 0.146, 122.0, 180.0)          # omega (ACE)
    c1 = place_atom(c0, n1, ca, 0.152, 111.0, phi)
    cb = place_atom(c0, n1, ca, 0.153, 110.0, phi - 120.0)        # L-alanine
    n2 = place_atom(n1, ca, c1, 0.133, 116.0, psi)
    o1 = place_atom(n1, ca, c1, 0.123, 121.0, psi + 180.0)
    c2 = place_atom(ca, c1, n2, 0.146, 122.0, 180.0)            # omega (NME)
    return [("ACE", "CH3", "C", ch3), ("ACE", "C", "C", c0), ("ACE", "O", "O", o0),
            ("ALA", "N", "N", n1), ("ALA", "CA", "C", ca), ("ALA", "CB", "C", cb),
            ("ALA", "C", "C", c1), ("ALA", "O", "O", o1),
            ("NME", "N", "N", n2), ("NME", "C", "C", c2)]


def build_alanine_dipeptide(forcefield_files=("amber99sbildn.xml", "amber99_obc.xml"),
                            phi: float = -80.0, psi: float = 80.0, minimise: bool = True):
    """Build an ACE-ALA-NME structure (22 atoms) with OpenMM.

    Returns
    -------
    topology : openmm.app.Topology
    positions : ndarray, shape (22, 3), nm
    """
    import openmm
    from openmm import app, unit

    heavy = _dipeptide_heavy_atoms(phi, psi)
    top = app.Topology()
    chain = top.addChain()
    residues, atoms = {}, {}
    for res, name, elem, _ in heavy:
        if res not in residues:
            residues[res] = top.addResidue(res, chain)
        atoms[(res, name)] = top.addAtom(name, app.Element.getBySymbol(elem), residues[res])
    for a, b in [(("ACE", "CH3"), ("ACE", "C")), (("ACE", "C"), ("ACE", "O")),
                 (("ACE", "C"), ("ALA", "N")), (("ALA", "N"), ("ALA", "CA")),
                 (("ALA", "CA"), ("ALA", "CB")), (("ALA", "CA"), ("ALA", "C")),
                 (("ALA", "C"), ("ALA", "O")), (("ALA", "C"), ("NME", "N")),
                 (("NME", "N"), ("NME", "C"))]:
        top.addBond(atoms[a], atoms[b])
    pos = np.array([p for *_, p in heavy])
    ff = app.ForceField(*forcefield_files)
    modeller = app.Modeller(top, pos * unit.nanometer)
    modeller.addHydrogens(ff)
    top, positions = modeller.topology, modeller.positions
    if minimise:
        system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
        integ = openmm.VerletIntegrator(0.001)
        ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(positions)
        openmm.LocalEnergyMinimizer.minimize(ctx, 1e-3, 0)
        positions = ctx.getState(getPositions=True).getPositions(asNumpy=True)
    return top, np.asarray(positions.value_in_unit(unit.nanometer))


def icosahedron() -> np.ndarray:
    """The 12 vertices of a regular icosahedron with unit circumradius, shape (12, 3)."""
    golden = (1 + 5**0.5) / 2
    v = []
    for a in (-1, 1):
        for b in (-1, 1):
            v += [(0, a, b * golden), (a, b * golden, 0), (b * golden, 0, a)]
    return np.array(v, dtype=float) / np.sqrt(1 + golden**2)


def mackay_icosahedron(shells: int, spacing: float = 1.0) -> np.ndarray:
    """Sites of a Mackay icosahedron: centre plus 1 shell (13 sites) or 2 shells (55 sites).

    The second shell has the 12 vertices at twice the first shell's radius and the 30 midpoints
    of its edges. ``spacing`` is the centre-to-vertex distance of the first shell.

    Returns
    -------
    ndarray, shape (13, 3) or (55, 3), in units of ``spacing``
    """
    if shells not in (1, 2):
        raise ValueError(f"shells must be 1 or 2, got {shells}")
    ico = icosahedron()
    d = np.linalg.norm(ico[:, None] - ico[None], axis=-1)
    edge = d[d > 1e-9].min()
    edges = [(i, j) for i in range(12) for j in range(i + 1, 12) if np.isclose(d[i, j], edge)]
    pts = [np.zeros(3)] + list(ico)
    if shells == 2:
        pts += list(2 * ico) + [ico[i] + ico[j] for i, j in edges]
    return spacing * np.array(pts)


def _capped_backbone(residues, phi_psi):
    """(residue index, residue name, atom name, element, position nm) of the heavy backbone (and CB)
    of ACE-X1-...-Xn-NME, by NeRF from standard peptide geometry with the given (phi, psi) in degrees."""
    out = []
    ch3, c0 = np.array([0.0, 0.0, 0.0]), np.array([0.152, 0.0, 0.0])
    o0 = place_atom(np.array([0.0, 1.0, 0.0]), ch3, c0, 0.123, 121.0, 0.0)
    out += [(0, "ACE", "CH3", "C", ch3), (0, "ACE", "C", "C", c0), (0, "ACE", "O", "O", o0)]
    prev_ca, prev_c = ch3, c0                       # the previous residue's CA (CH3 for ACE) and C
    n = place_atom(o0, ch3, c0, 0.133, 116.0, 180.0)
    for k, (name, (phi, psi)) in enumerate(zip(residues, phi_psi), start=1):
        ca = place_atom(prev_ca, prev_c, n, 0.146, 122.0, 180.0)           # omega: trans
        c = place_atom(prev_c, n, ca, 0.152, 111.0, phi)
        out += [(k, name, "N", "N", n), (k, name, "CA", "C", ca)]
        if name != "GLY":
            out.append((k, name, "CB", "C", place_atom(prev_c, n, ca, 0.153, 110.0, phi - 120.0)))   # L
        next_n = place_atom(n, ca, c, 0.133, 116.0, psi)
        o = place_atom(n, ca, c, 0.123, 121.0, psi + 180.0)
        out += [(k, name, "C", "C", c), (k, name, "O", "O", o)]
        prev_ca, prev_c, n = ca, c, next_n
    c_me = place_atom(prev_ca, prev_c, n, 0.146, 122.0, 180.0)
    k = len(residues) + 1
    out += [(k, "NME", "N", "N", n), (k, "NME", "C", "C", c_me)]
    return out


def build_capped_peptide(residues=("ALA",), phi_psi=None,
                         forcefield_files=("amber99sbildn.xml", "amber99_obc.xml"), minimise: bool = True):
    """An ACE-X1-...-Xn-NME structure with all atoms, for any standard residues (rings included).

    The backbone and CB are placed from standard geometry at the given (phi, psi) per residue
    (degrees; default (-80, 80) each, all peptide bonds trans, L-amino acids); PDBFixer adds the
    remaining side-chain atoms from its residue templates and the hydrogens; the structure is then
    minimised in the force field.

    Returns
    -------
    topology : openmm.app.Topology
    positions : ndarray, shape (N, 3), nm
    """
    import io

    import openmm
    from openmm import app, unit
    from pdbfixer import PDBFixer

    residues = tuple(r.upper() for r in residues)
    phi_psi = list(phi_psi) if phi_psi is not None else [(-80.0, 80.0)] * len(residues)
    if len(phi_psi) != len(residues):
        raise ValueError(f"phi_psi: {len(phi_psi)} pairs for {len(residues)} residues")
    lines = []
    for serial, (k, res, name, elem, xyz) in enumerate(_capped_backbone(residues, phi_psi), start=1):
        x, y, z = 10.0 * xyz                                 # PDB: Angstrom
        lines.append(f"ATOM  {serial:5d} {name:<4s} {res:>3s} A{k + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00"
                     f"          {elem:>2s}")
    fixer = PDBFixer(pdbfile=io.StringIO("\n".join(lines + ["END"]) + "\n"))
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    fixer.missingTerminals = {}
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(7.0)
    top, positions = fixer.topology, fixer.positions
    if minimise:
        ff = app.ForceField(*forcefield_files)
        system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
        ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(positions)
        openmm.LocalEnergyMinimizer.minimize(ctx, 1e-3, 0)
        positions = ctx.getState(getPositions=True).getPositions(asNumpy=True)
    return top, np.asarray(positions.value_in_unit(unit.nanometer), dtype=np.float64)
