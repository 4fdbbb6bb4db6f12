"""Descriptor speed: ml4m side by side with DScribe 2.1.2 and featomic 0.6.7, one run.

Usage (from the repository root)::

    PYTHONPATH=src /work/main/.venv/bin/python benchmarks/descriptors_speed.py \
        --peer-python /work/peers/featomic/bin/python [--repeats 7] [--out FILE.md]

The peers live in their own venv (never an ml4m dependency); their part runs in a
subprocess with that interpreter on identical structures (written once to extxyz).
All codes run on one thread (OMP/OPENBLAS/MKL/RAYON_NUM_THREADS=1). Rounds alternate
ml4m and peers; each case reports the median over all repeats and the ratio of medians
peer / ml4m (> 1: ml4m faster).

Cases
-----
* SOAP values, fcc Cu 6x6x6 (864 atoms), r_cut 5 A, n_max 8, l_max 6, sigma 0.5 A.
* SOAP with position derivatives, 10 periodic rattled frames of 108 atoms
  (DScribe: numerical derivatives, the only kind it has for periodic cells; timed per
  frame over the 10 frames once, as it is slow).
* ACSF on the 864-atom cell (r_cut 5 A, ml4m's default G2/G4 set), ml4m vs DScribe.
* Scaling of ml4m SOAP and ACSF from 108 to 6912 atoms: fitted exponent of t ~ N^k.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
from ase.build import bulk  # noqa: E402

from ml4m.data.frames import Frame  # noqa: E402
from ml4m.descriptors import ACSF, SOAP  # noqa: E402
from ml4m.descriptors.acsf import DEFAULT_G2, DEFAULT_G4  # noqa: E402

R_CUT, N_MAX, L_MAX, SIGMA = 5.0, 8, 6, 0.5
SCALING = (3, 6, 9, 12)  # cubic fcc repeats: 108, 864, 2916, 6912 atoms

PEER_CODE = r'''
import json, sys, time
import ase.io
import numpy as np
task = json.loads(sys.argv[1])
out = {}
from dscribe.descriptors import ACSF, SOAP
from featomic import SoapPowerSpectrum
from featomic.basis import Gto, TensorProduct
from featomic.cutoff import Cutoff, ShiftedCosine
from featomic.density import Gaussian
big = ase.io.read(task["big"])
frames = ase.io.read(task["frames"], ":")
rc, nmax, lmax, sigma = task["r_cut"], task["n_max"], task["l_max"], task["sigma"]
ds_soap = SOAP(species=["Cu"], r_cut=rc, n_max=nmax, l_max=lmax, sigma=sigma, periodic=True)
fa = SoapPowerSpectrum(cutoff=Cutoff(rc, ShiftedCosine(width=0.5)), density=Gaussian(width=sigma),
                       basis=TensorProduct(max_angular=lmax, radial=Gto(max_radial=nmax - 1)))
ds_acsf = ACSF(species=["Cu"], r_cut=rc, g2_params=task["g2"], g4_params=task["g4"], periodic=True)
def timeit(fn, n):
    fn()  # warm-up
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return ts
n = task["repeats"]
out["soap_dscribe"] = timeit(lambda: ds_soap.create(big), n)
out["soap_featomic"] = timeit(lambda: fa.compute(big), n)
out["acsf_dscribe"] = timeit(lambda: ds_acsf.create(big), n)
out["soap_grad_featomic"] = timeit(lambda: fa.compute(frames, gradients=["positions"]), n)
if task["dscribe_grad"]:
    ts = []
    for f in frames:
        t = time.perf_counter(); ds_soap.derivatives(f, method="numerical"); ts.append(time.perf_counter() - t)
    out["soap_grad_dscribe_per_frame"] = ts
import dscribe, featomic, importlib.metadata as md
out["versions"] = {"dscribe": md.version("dscribe"), "featomic": md.version("featomic")}
print(json.dumps(out))
'''


def _timeit(fn, n):
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def fcc(rep: int):
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((rep, rep, rep))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--peer-python", default="/work/peers/featomic/bin/python")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2, help="alternations ml4m / peers")
    ap.add_argument("--out", default="benchmarks/results/descriptors.md")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="ml4m_bench_"))
    big = fcc(6)
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(10):
        f = fcc(3)
        f.positions += rng.normal(scale=0.05, size=f.positions.shape)
        frames.append(f)
    ase.io.write(tmp / "big.extxyz", big)
    ase.io.write(tmp / "frames.extxyz", frames)
    # read back: ml4m sees exactly the peers' inputs
    big_f = Frame.from_atoms(ase.io.read(tmp / "big.extxyz"))
    frames_f = [Frame.from_atoms(a) for a in ase.io.read(tmp / "frames.extxyz", ":")]

    soap = SOAP(["Cu"], r_cut=R_CUT, n_max=N_MAX, l_max=L_MAX, sigma=SIGMA, cutoff_width=0.5)
    acsf = ACSF(["Cu"], r_cut=R_CUT, g2_params=DEFAULT_G2, g4_params=DEFAULT_G4)
    ours: dict[str, list[float]] = {}
    peers: dict[str, list[float]] = {}
    versions = {}
    for rnd in range(args.rounds):
        for key, fn in (("soap", lambda: soap.compute(big_f)),
                        ("acsf", lambda: acsf.compute(big_f)),
                        ("soap_grad", lambda: soap.compute(frames_f, gradients=True))):
            ours.setdefault(key, []).extend(_timeit(fn, args.repeats))
        task = {"big": str(tmp / "big.extxyz"), "frames": str(tmp / "frames.extxyz"),
                "r_cut": R_CUT, "n_max": N_MAX, "l_max": L_MAX, "sigma": SIGMA,
                "g2": DEFAULT_G2, "g4": DEFAULT_G4, "repeats": args.repeats,
                "dscribe_grad": rnd == 0}
        proc = subprocess.run([args.peer_python, "-c", PEER_CODE, json.dumps(task)],
                              capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        versions = res.pop("versions")
        for k, v in res.items():
            peers.setdefault(k, []).extend(v)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

    # per-frame timings of ml4m gradients, for the DScribe comparison
    ours["soap_grad_per_frame"] = _timeit(lambda: [soap.compute(f, gradients=True)
                                                  for f in frames_f], 3)
    ours["soap_grad_per_frame"] = [t / len(frames_f) for t in ours["soap_grad_per_frame"]]

    # scaling: sizes interleaved in every repeat, so that load changes hit all sizes
    scaling = {}
    sized = [Frame.from_atoms(fcc(rep)) for rep in SCALING]
    for name, desc in (("soap", soap), ("acsf", acsf)):
        times: list[list[float]] = [[] for _ in sized]
        for fr in sized:
            desc.compute(fr)  # warm-up
        for _ in range(args.repeats):
            for k, fr in enumerate(sized):
                t = time.perf_counter()
                desc.compute(fr)
                times[k].append(time.perf_counter() - t)
        pts = [(len(fr), float(np.median(ts))) for fr, ts in zip(sized, times)]
        n, t = np.array(pts).T
        k = float(np.polyfit(np.log(n), np.log(t), 1)[0])
        k_large = float(np.polyfit(np.log(n[1:]), np.log(t[1:]), 1)[0])
        scaling[name] = (pts, k, k_large)

    med = {k: float(np.median(v)) for k, v in ours.items()}
    pmed = {k: float(np.median(v)) for k, v in peers.items()}
    rows = [
        ("SOAP values, 864 atoms", "soap", "soap_dscribe", "DScribe"),
        ("SOAP values, 864 atoms", "soap", "soap_featomic", "featomic"),
        ("SOAP + position grads, 10 x 108 atoms", "soap_grad", "soap_grad_featomic", "featomic"),
        ("SOAP + position grads, per 108-atom frame", "soap_grad_per_frame",
         "soap_grad_dscribe_per_frame", "DScribe (numerical)"),
        ("ACSF values, 864 atoms", "acsf", "acsf_dscribe", "DScribe"),
    ]
    lines = [
        "# Descriptor speed: ml4m vs DScribe and featomic",
        "",
        f"Generated by `benchmarks/descriptors_speed.py` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{os.environ.get('ML4M_BENCH_MACHINE', 'otherwise idle')}; ratios of medians of "
        "runs interleaved in the same script are the meaningful number). One thread "
        "for every code. Peers: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "",
        f"SOAP: r_cut {R_CUT} A, n_max {N_MAX}, l_max {L_MAX}, Gaussian width {SIGMA} A "
        "(ml4m: polynomial radial basis, Hermite-splined radial integral; DScribe: GTO; "
        "featomic: GTO, splined). ml4m's gradient run also returns strain derivatives. "
        "ACSF: r_cut 5 A, 8 G2 + 6 G4 (ml4m's default set), identical in both codes.",
        "",
        "| case | ml4m median (s) | peer | peer median (s) | peer / ml4m |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for label, ok, pk, peer in rows:
        if pk not in pmed:
            continue
        lines.append(f"| {label} | {med[ok]:.4f} | {peer} | {pmed[pk]:.4f} | "
                     f"{pmed[pk] / med[ok]:.2f} |")
    lines += ["", f"Per atom: ml4m SOAP {1e6 * med['soap'] / 864:.0f} us, DScribe SOAP "
              f"{1e6 * pmed['soap_dscribe'] / 864:.0f} us, featomic SOAP "
              f"{1e6 * pmed['soap_featomic'] / 864:.0f} us; ml4m ACSF "
              f"{1e6 * med['acsf'] / 864:.0f} us, DScribe ACSF "
              f"{1e6 * pmed['acsf_dscribe'] / 864:.0f} us.", "",
              "## Scaling of ml4m with the number of atoms (fcc Cu, one frame)", "",
              "| descriptor | " + " | ".join(f"{n} atoms (s)" for n, _ in scaling['soap'][0])
              + " | exponent k (t ~ N^k), all sizes | k, 864 to 6912 atoms |",
              "| --- |" + " ---: |" * (len(SCALING) + 2)]
    scaling_note = ("Medians of sizes interleaved within each repeat; exponents from "
                    "least-squares fits of log t on log N (all sizes, and without 108 atoms, "
                    "where fixed per-call costs dominate).")
    for name, (pts, k, k_large) in scaling.items():
        lines.append(f"| {name} | " + " | ".join(f"{t:.4f}" for _, t in pts)
                     + f" | {k:.2f} | {k_large:.2f} |")
    lines += ["", scaling_note]
    lines += ["", f"Repeats per round: {args.repeats}, rounds: {args.rounds}; DScribe numerical "
              "derivatives: each of the 10 frames once (median per frame)."]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
