"""Shared helpers of the analysis benchmarks: data generator and worker launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ML4M_PY = os.environ.get("ML4M_PYTHON", sys.executable)
#: the peers' venv (../shared/peers/README.md: requirements-peers.txt installed into V)
PEER_PY = os.environ.get("DADAPY_PYTHON", str(ROOT.parent / "peers" / "venv" / "bin" / "python"))
WORKER = Path(__file__).with_name("_workers.py")


def manifold_data(n: int, seed: int = 0, latent: int = 10, dim: int = 50, modes: int = 5):
    """``n`` points in ``dim`` features on a curved ``latent``-dimensional manifold.

    A mixture of ``modes`` unit Gaussians in ``latent`` dimensions (centres 6 apart),
    mapped by ``[z, 0.5 sin(z)]`` and a random orthonormal map into ``dim`` features:
    intrinsic dimension ``latent``, a known number of density peaks.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(modes, latent))
    centres *= 6.0 / np.sqrt(2 * latent)
    z = centres[rng.integers(modes, size=n)] + rng.normal(size=(n, latent))
    y = np.hstack([z, 0.5 * np.sin(z)])
    q, _ = np.linalg.qr(np.random.default_rng(seed + 1000).normal(size=(dim, y.shape[1])))
    return np.ascontiguousarray(y @ q.T)


def run_worker(which: str, X_path: Path, out_path: Path, maxk: int, Z: float,
               backend: str = "auto", timeout: float | None = None) -> dict:
    """Run one pipeline in a fresh process; return its outputs (times, peak memory)."""
    py = ML4M_PY if which == "ml4m" else PEER_PY
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") if which == "ml4m" else ""
    proc = subprocess.run([py, str(WORKER), which, str(X_path), str(out_path), str(maxk), str(Z),
                           backend], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} worker failed:\n{proc.stderr[-3000:]}")
    with np.load(out_path, allow_pickle=False) as z:
        res = {k: z[k] for k in z.files}
    res["times"] = json.loads(str(res["times"]))
    res["peak_mib"] = float(res["peak_mib"])
    return res


def machine_note() -> str:
    state = os.environ.get("ML4M_BENCH_MACHINE", "otherwise idle for the latest runs; earlier rows "
                           "were made on a machine shared with other engineers")
    return (f"{os.cpu_count()} cores, {state} (ratios of medians of repeated, interleaved runs "
            "in fresh processes)")


def run_json(args: list[str]) -> tuple[dict, float]:
    """``ml4m ARGS --json`` in a fresh process: its JSON object and wall time (s)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ml4m", *args, "--json"], capture_output=True,
                          text=True)
    if proc.returncode:
        sys.exit(f"ml4m {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), time.perf_counter() - t0


def notes_below_table(path: Path) -> list[str]:
    """Lines of a results markdown file after its first table, the generated one
    (hand-written notes a regenerated report keeps, tables of their own included);
    empty when the file does not exist."""
    if not path.exists():
        return []
    text = path.read_text().splitlines()
    first = next((k for k, line in enumerate(text) if line.startswith("|")), len(text))
    end = next((k for k in range(first, len(text)) if not text[k].startswith("|")), len(text))
    return text[end:]


def calculator_errors(calc, frames) -> tuple[np.ndarray, np.ndarray]:
    """Errors of an ASE calculator on labelled ASE frames: energy per atom (eV/atom, one
    per frame) and forces (eV/A, all atoms stacked)."""
    de, df = [], []
    for ref in frames:
        atoms = ref.copy()
        atoms.calc = calc
        de.append((atoms.get_potential_energy() - ref.get_potential_energy()) / len(ref))
        df.append(atoms.get_forces() - ref.get_forces())
    return np.array(de), np.concatenate(df)


class PeerModel:
    """A peer's model file as an ASE calculator (``mace``: ``MACECalculator`` in
    float32, the dtype ``mace_peer.py`` trains and times it in). ``kind`` is one of
    ``KINDS`` (:func:`parse_peers` checks the command line)."""

    KINDS = ("mace",)

    def __init__(self, kind: str, path: Path) -> None:
        self.kind, self.path = kind, path

    def as_calculator(self):
        from mace.calculators import MACECalculator

        return MACECalculator(model_paths=str(self.path), device="cpu", default_dtype="float32")


def parse_named_paths(parser, items: list[str], flag: str) -> dict[tuple[str, str], Path]:
    """``FLAG SYSTEM/NAME=PATH ...`` as ``{(SYSTEM, NAME): PATH}``; a malformed item stops
    with the parser's usage error."""
    out = {}
    for item in items:
        key, sep, path = item.partition("=")
        system, slash, name = key.partition("/")
        if not (sep and slash and system and name and path):
            parser.error(f"{flag} takes SYSTEM/NAME=PATH, got {item!r}")
        out[(system, name)] = Path(path)
    return out


def parse_peers(parser, items: list[str]) -> dict[tuple[str, str], Path]:
    """``--peer SYSTEM/KIND=PATH ...`` as ``{(SYSTEM, KIND): PATH}``; a malformed item or
    an unknown KIND stops with the parser's usage error."""
    peers = parse_named_paths(parser, items, "--peer")
    for _, kind in peers:
        if kind not in PeerModel.KINDS:
            parser.error(f"--peer: unknown peer {kind!r}; known: {', '.join(PeerModel.KINDS)}")
    return peers
