"""Enhanced-sampling reference: umbrella sampling along backbone dihedrals, combined by MBAR.

Windows restrain phi, psi, or both on a grid ('phi+psi') of one residue (`UmbrellaSettings.residue`:
the k-th residue that has both; the first by default) with a periodic harmonic bias
0.5 kappa min(|theta - theta_k|, 2 pi - |theta - theta_k|)^2 (kJ/mol, kappa in kJ/mol/rad^2) through one
OpenMM CustomTorsionForce per restrained angle. The number of windows and kappa may differ per angle (e.g. 30 windows with kappa 300 on phi, whose barriers are steep, and 18
with kappa 100 on psi). MBAR's reduced potentials use `bias_energy`, the same function of the same
float64 angles; each window also stores OpenMM's own restraint energy of every sample and the
analysis refuses to proceed if the two differ.

Windows are visited in chains: a chain starts from the minimised structure (minimised without the
restraint), is steered to its first window by moving the restraint centre in small steps, and every
later window starts from the end of the previous one, its grid neighbour (a serpentine path through
the grid), then equilibrates before sampling. Every sample records phi, psi, the peptide-bond
torsions omega and the chirality at each CA, so a window that flipped to D-alanine or to a cis
peptide is reported. MBAR (pymbar) runs on samples decorrelated by the slowest of several
observables the estimates depend on (the restrained and free backbone angles, omega, the restraint
energy; the potential energy's is recorded), with statistical inefficiencies that also see slow
components under a fast oscillation (block averages). Every saved sample then gets its unbiased
weight, w_n proportional to 1 / sum_k N_k exp(f_k - u_k(x_n)) with N_k the number of samples window k
saved (the mixture they were drawn from, not the decorrelated count), which yields the free-energy profile, dF(phi > 0 vs phi < 0),
basin populations, and weighted frames that `molsample compare` can use as a reference.
"""
from .mbar import (DECORRELATION_OBSERVABLES, RESTRAINT_TOLERANCE_KJ, mbar_analysis, overlap_report,
                   statistical_inefficiency, window_inefficiencies)
from .run import add_restraints, run_chain, run_umbrella
from .windows import (RESTRAINT_EXPRESSION, RESTRAINT_GROUP, UmbrellaSettings, all_centres, backbone_residues, bias_energy,
                      chains, chirality, chirality_atoms, dihedral, dihedral_atoms, kappas, omega_atoms, residue_name,
                      restrained_angles,
                      serpentine_order, window_bias, window_centres, windows_per_angle, wrap_angle)

__all__ = ["DECORRELATION_OBSERVABLES", "RESTRAINT_EXPRESSION", "RESTRAINT_GROUP", "RESTRAINT_TOLERANCE_KJ",
           "UmbrellaSettings", "add_restraints", "all_centres", "backbone_residues", "bias_energy", "chains", "chirality", "chirality_atoms",
           "dihedral", "dihedral_atoms", "kappas", "mbar_analysis", "omega_atoms", "overlap_report", "residue_name",
           "restrained_angles",
           "run_chain", "run_umbrella", "serpentine_order", "statistical_inefficiency", "window_bias",
           "window_centres", "window_inefficiencies", "windows_per_angle", "wrap_angle"]
