# Reproduces the start of every window of the shipped 12 x 12 grid as the code before commit 4b02ba6 made it
# (PYTHONPATH=. python benchmarks/umbrella_old_start_check.py; one JSON line per window, ~1.5 CPU-min).
"""Old 2D-grid start protocol (every window minimised from the PDB with its restraint on, then 20 ps):
per window, chirality at CA and omega torsions after minimisation and over the 20 ps, and phi/psi offsets."""
import json, math, time
import numpy as np, openmm
from openmm import unit
from molsample.targets import load_target
from molsample.umbrella import UmbrellaSettings, all_centres, dihedral_atoms
s = UmbrellaSettings(dihedral="phi+psi", windows=12, kappa=50.0, equilibration_ps=20.0)
t = load_target("aldp"); base, _ = t.openmm_system()
def dih(x, a):
    b0, b1, b2 = x[a[0]] - x[a[1]], x[a[2]] - x[a[1]], x[a[3]] - x[a[2]]
    b1 = b1 / np.linalg.norm(b1); v = b0 - (b0 @ b1) * b1; w = b2 - (b2 @ b1) * b1
    return math.atan2(np.cross(b1, v) @ w, v @ w)
def chir(x): return float((x[6] - x[8]) @ np.cross(x[14] - x[8], x[10] - x[8]))
A = {"phi": dihedral_atoms(t.topology, "phi"), "psi": dihedral_atoms(t.topology, "psi"), "w1": [0, 4, 6, 8], "w2": [8, 14, 16, 18]}
ref = chir(np.asarray(t.positions))
rows = []
t0 = time.process_time()
for k, c in enumerate(all_centres(s)):
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(base))
    f = openmm.CustomTorsionForce("0.5*kappa*dtheta^2; dtheta = min(d, 2*pi - d); d = abs(theta - theta0);" f" pi = {math.pi}")
    f.addGlobalParameter("kappa", s.kappa); f.addPerTorsionParameter("theta0")
    for n, ci in zip(("phi", "psi"), c): f.addTorsion(*A[n], [float(ci)])
    system.addForce(f)
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 1 * unit.femtosecond)
    integ.setRandomNumberSeed(k + 1)
    ctx = openmm.Context(system, integ, openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(t.positions)
    openmm.LocalEnergyMinimizer.minimize(ctx, 10.0, 0)
    x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    r = {"k": k, "centre_deg": np.degrees(c).round(1).tolist(), "min": {n: round(math.degrees(dih(x, a)), 1) for n, a in A.items()},
         "min_D": chir(x) * ref < 0}
    ctx.setVelocitiesToTemperature(300 * unit.kelvin, k + 1)
    D = cis = 0; traj = []
    for i in range(200):
        integ.step(100)
        x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        D += chir(x) * ref < 0; cis += abs(dih(x, A["w1"])) < math.pi / 2 or abs(dih(x, A["w2"])) < math.pi / 2
        traj.append([dih(x, A["phi"]), dih(x, A["psi"])])
    traj = np.array(traj)
    r.update(eq_D_fraction=D / 200, eq_cis_fraction=cis / 200,
             eq_last5ps_mean_offset_deg=np.degrees(np.angle(np.exp(1j * (traj[-50:] - c)).mean(0))).round(1).tolist())
    rows.append(r); print(json.dumps(r), flush=True)
print("cpu_s", time.process_time() - t0)
