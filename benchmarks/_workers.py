"""Benchmark workers: one fresh process per run, for ml4m and for DADApY.

Run as ``python _workers.py {ml4m|dadapy} INPUT.npy OUTPUT.npz MAXK Z [BACKEND]``.
The DADApY branch runs in the peer venv (numpy<2) and never imports ml4m; the ml4m
branch never imports dadapy. Each writes its outputs, step times (seconds) and its
peak resident memory (MiB, ``ru_maxrss``) to OUTPUT.npz. Library imports are timed
separately (``import``, not part of ``total``) for both: DADApY's compiled extensions and
ml4m's analysis package with, for the ``ivf`` backend, numba and its cached kernels.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_ml4m(X, maxk, Z, backend):
    s = time.perf_counter()
    from ml4m.analysis import NeighborGraph, adp, id_scaling, kstar, pak_density, twonn

    if backend == "ivf":
        import ml4m.analysis._cellknn  # noqa: F401  (numba and the cached kernels, loaded lazily otherwise)
    t = {"import": time.perf_counter() - s}
    t0 = time.perf_counter()
    g = NeighborGraph.build(X, maxk, backend=backend)
    t["neighbours"] = time.perf_counter() - t0
    s = time.perf_counter()
    idr = twonn(g)
    idfit = twonn(g, algorithm="fit")
    t["twonn"] = time.perf_counter() - s
    s = time.perf_counter()
    sc = id_scaling(g)
    t["gride"] = time.perf_counter() - s
    s = time.perf_counter()
    # the linear-fit TwoNN (DADApY's default) feeds the density, as in DADApY
    ks = kstar(g, idfit.estimate)
    den = pak_density(g, idfit.estimate, k_star=ks)
    t["pak"] = time.perf_counter() - s
    s = time.perf_counter()
    cl = adp(g, den.log_density, den.error, den.k, Z=Z)
    t["adp"] = time.perf_counter() - s
    t["total"] = time.perf_counter() - t0
    return dict(id_twonn=idr.estimate, id_twonn_fit=idfit.estimate, gride=sc.estimate,
                gride_err=sc.error, log_den=den.log_density, kstar=den.k, labels=cl.labels,
                centers=cl.centers, times=json.dumps(t))


def run_dadapy(X, maxk, Z, backend):
    s = time.perf_counter()
    from dadapy import Data

    t = {"import": time.perf_counter() - s}
    t0 = time.perf_counter()
    d = Data(X, maxk=maxk + 1, verbose=False)  # DADApY counts the point itself
    d.compute_distances()
    t["neighbours"] = time.perf_counter() - t0
    s = time.perf_counter()
    idfit, _, _ = d.compute_id_2NN()
    t["twonn"] = time.perf_counter() - s
    s = time.perf_counter()
    ids, errs, _ = d.return_id_scaling_gride(range_max=maxk)
    t["gride"] = time.perf_counter() - s
    s = time.perf_counter()
    d.set_id(idfit)
    d.compute_density_PAk()
    t["pak"] = time.perf_counter() - s
    s = time.perf_counter()
    d.compute_clustering_ADP(Z=Z)
    t["adp"] = time.perf_counter() - s
    t["total"] = time.perf_counter() - t0
    return dict(id_twonn_fit=idfit, gride=ids, gride_err=errs, log_den=d.log_den,
                kstar=d.kstar, labels=d.cluster_assignment, centers=np.array(d.cluster_centers),
                times=json.dumps(t))


if __name__ == "__main__":
    which, inp, outp, maxk, Z = sys.argv[1:6]
    backend = sys.argv[6] if len(sys.argv) > 6 else "auto"
    X = np.load(inp)
    fn = run_ml4m if which == "ml4m" else run_dadapy
    res = fn(X, int(maxk), float(Z), backend)
    res["peak_mib"] = _peak_mib()
    np.savez(outp, **res)
