"""Hostile input to every command: one clear line on stderr, exit 2, nothing written.

Each case runs the real command line in-process. The user's folder is snapshotted
before and compared after: a refused command changes nothing and leaves no temporary
file or lock behind.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml4m.cli.main import main
from ml4m.data import default_dataset, write_extxyz


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with valid data, a small model, a property model and broken files."""
    d = tmp_path_factory.mktemp("hostile")
    ds = default_dataset()
    write_extxyz(ds[::8], d / "train.extxyz")
    write_extxyz(ds[4::16], d / "valid.extxyz")
    ds[0].to_atoms(with_labels=False).write(d / "start.extxyz")
    (d / "empty.extxyz").write_text("")
    (d / "garbage.bin").write_bytes(bytes(range(256)) * 8)
    text = (d / "valid.extxyz").read_text().splitlines()
    n = int(text[0])
    (d / "truncated.extxyz").write_text("\n".join(text[: n // 2]) + "\n")
    (d / "huge_count.extxyz").write_text("999999999999\nProperties=species:S:1:pos:R:3\nCu 0 0 0\n")
    (d / "nan_label.extxyz").write_text(
        "2\nenergy=abc Properties=species:S:1:pos:R:3:forces:R:3 pbc=\"F F F\"\n"
        "Cu 0 0 0 0 0 0\nCu 0 0 2.5 0 0 0\n")
    (d / "no_energy.extxyz").write_text(
        "2\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\nCu 0 0 0\nCu 0 0 2.5\n")
    (d / "argon.extxyz").write_text(
        "2\nenergy=-1.0 Properties=species:S:1:pos:R:3:forces:R:3 pbc=\"F F F\"\n"
        "Ar 0 0 0 0 0 0\nAr 0 0 3.5 0 0 0\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "params.yaml").write_text(f"model: ace\ntrain: {d / 'train.extxyz'}\nparams: 5\n")
    (d / "rcut.yaml").write_text(f"model: ace\ntrain: {d / 'train.extxyz'}\n"
                                 "descriptor: {r_cut: abc}\n")
    (d / "sigma.yaml").write_text(f"model: ace\ntrain: {d / 'train.extxyz'}\n"
                                  "sigmas: {forces: -1}\n")
    (d / "broken.yaml").write_text("model: [ace\n")
    np.save(d / "nan.npy", np.full((50, 4), np.nan))
    np.save(d / "one_row.npy", np.ones((1, 4)))
    np.savez(d / "nofeatures.npz", other=np.ones((10, 2)))
    (d / "text.csv").write_text("a,b\nx,y\nz,w\n")
    code = main(["fit", "--train", str(d / "train.extxyz"), "--search", "off", "-o",
                 str(d / "m.ml4m"), "--json"])
    assert code == 0
    return d


D = "{d}"
CASES = {
    # curate / learn
    "curate n zero": ["curate", f"{D}/train.extxyz", "--n", "0", "-o", f"{D}/sub.extxyz"],
    "curate unknown method": ["curate", f"{D}/train.extxyz", "--n", "3", "--method", "best",
                              "-o", f"{D}/sub.extxyz"],
    "curate output is the pool": ["curate", f"{D}/train.extxyz", "--n", "3", "-o",
                                  f"{D}/train.extxyz"],
    "learn config not a mapping": ["learn", f"{D}/list.yaml", "-o", f"{D}/learn"],
    "learn missing config": ["learn", f"{D}/nope.yaml", "-o", f"{D}/learn"],
    # optimize / export
    "optimize config not a mapping": ["optimize", f"{D}/list.yaml", "-o", f"{D}/opt"],
    "optimize missing config": ["optimize", f"{D}/nope.yaml", "-o", f"{D}/opt"],
    "optimize zero budget": ["optimize", f"{D}/list.yaml", "--budget", "0", "-o", f"{D}/opt"],
    "export a linear model": ["export", f"{D}/m.ml4m", "-o", f"{D}/m.pt2"],
    "export missing model": ["export", f"{D}/nope.ml4m", "-o", f"{D}/m.pt2"],
    "export output is the model": ["export", f"{D}/m.ml4m", "-o", f"{D}/m.ml4m"],
    # data info / split / pack
    "info missing file": ["data", "info", f"{D}/nope.extxyz"],
    "info folder": ["data", "info", D],
    "info empty file": ["data", "info", f"{D}/empty.extxyz"],
    "info binary": ["data", "info", f"{D}/garbage.bin", "--format", "extxyz"],
    "info truncated": ["data", "info", f"{D}/truncated.extxyz"],
    "info huge atom count": ["data", "info", f"{D}/huge_count.extxyz"],
    "info text label": ["data", "info", f"{D}/nan_label.extxyz"],
    "info unknown format": ["data", "info", f"{D}/train.extxyz", "--format", "nosuch"],
    "split negative": ["data", "split", f"{D}/train.extxyz", "--valid", "-0.1", "-o", f"{D}/s"],
    "split nan": ["data", "split", f"{D}/train.extxyz", "--valid", "nan", "-o", f"{D}/s"],
    "split over one": ["data", "split", f"{D}/train.extxyz", "--valid", "0.6", "--test", "0.6",
                       "-o", f"{D}/s"],
    "split by missing key": ["data", "split", f"{D}/train.extxyz", "--by", "nokey", "-o",
                             f"{D}/s"],
    "pack missing": ["data", "pack", f"{D}/nope.extxyz", "-o", f"{D}/p.store"],
    "pack empty": ["data", "pack", f"{D}/empty.extxyz", "-o", f"{D}/p.store"],
    # generate
    "gen negative T": ["data", "generate", "--temperatures", "-5", "-o", f"{D}/g.extxyz"],
    "gen nan T": ["data", "generate", "--temperatures", "nan", "-o", f"{D}/g.extxyz"],
    "gen unknown element": ["data", "generate", "--system", "Xx", "-o", f"{D}/g.extxyz"],
    "gen unknown calculator": ["data", "generate", "--calculator", "nosuch", "-o",
                               f"{D}/g.extxyz"],
    "gen not a calculator": ["data", "generate", "--calculator", "os:getcwd", "-o",
                             f"{D}/g.extxyz"],
    "gen bad kwargs": ["data", "generate", "--calculator-kwargs", '{"bogus": 1}', "-o",
                       f"{D}/g.extxyz"],
    "gen zero frames": ["data", "generate", "--frames", "0", "-o", f"{D}/g.extxyz"],
    "gen zero dt": ["data", "generate", "--timestep", "0", "-o", f"{D}/g.extxyz"],
    "gen config list": ["data", "generate", "--config", f"{D}/list.yaml", "-o", f"{D}/g.extxyz"],
    "gen config broken": ["data", "generate", "--config", f"{D}/broken.yaml", "-o",
                          f"{D}/g.extxyz"],
    # describe
    "describe zero cutoff": ["describe", f"{D}/valid.extxyz", "--descriptor", "soap", "--r-cut",
                             "0", "-o", f"{D}/x.npz"],
    "describe nan cutoff": ["describe", f"{D}/valid.extxyz", "--descriptor", "soap", "--r-cut",
                            "nan", "-o", f"{D}/x.npz"],
    "describe huge cutoff": ["describe", f"{D}/valid.extxyz", "--descriptor", "soap",
                             "--r-cut", "1e4", "-o", f"{D}/x.npz"],
    "describe n_max 0": ["describe", f"{D}/valid.extxyz", "--descriptor", "soap", "--n-max",
                         "0", "-o", f"{D}/x.npz"],
    "describe unknown species": ["describe", f"{D}/valid.extxyz", "--descriptor", "soap",
                                 "--species", "Xx", "-o", f"{D}/x.npz"],
    "describe missing": ["describe", f"{D}/nope.extxyz", "--descriptor", "soap", "-o",
                         f"{D}/x.npz"],
    # analyze
    "analyze missing": ["analyze", f"{D}/nope.npy"],
    "analyze nan": ["analyze", f"{D}/nan.npy"],
    "analyze one row": ["analyze", f"{D}/one_row.npy"],
    "analyze no features key": ["analyze", f"{D}/nofeatures.npz"],
    "analyze text csv": ["analyze", f"{D}/text.csv"],
    "analyze garbage npy": ["analyze", f"{D}/garbage.bin"],
    "analyze maxk 0": ["analyze", f"{D}/one_row.npy", "--maxk", "0"],
    # fit
    "fit missing train": ["fit", "--train", f"{D}/nope.extxyz", "-o", f"{D}/f.ml4m"],
    "fit config list": ["fit", f"{D}/list.yaml", "-o", f"{D}/f.ml4m"],
    "fit config broken": ["fit", f"{D}/broken.yaml", "-o", f"{D}/f.ml4m"],
    "fit params not a mapping": ["fit", f"{D}/params.yaml", "-o", f"{D}/f.ml4m"],
    "fit r_cut text": ["fit", f"{D}/rcut.yaml", "-o", f"{D}/f.ml4m"],
    "fit negative sigma": ["fit", f"{D}/sigma.yaml", "-o", f"{D}/f.ml4m"],
    "fit negative budget": ["fit", "--train", f"{D}/train.extxyz", "--max-minutes", "-1", "-o",
                            f"{D}/f.ml4m"],
    "fit nan budget": ["fit", "--train", f"{D}/train.extxyz", "--max-minutes", "nan", "-o",
                       f"{D}/f.ml4m"],
    "fit no labels": ["fit", "--train", f"{D}/no_energy.extxyz", "-o", f"{D}/f.ml4m"],
    "fit cuda without cuda": ["fit", "--train", f"{D}/train.extxyz", "--device", "cuda", "-o",
                              f"{D}/f.ml4m"],
    # test / md / relax
    "test missing model": ["test", f"{D}/nope.ml4m", f"{D}/valid.extxyz"],
    "test garbage model": ["test", f"{D}/garbage.bin", f"{D}/valid.extxyz"],
    "test unlabelled": ["test", f"{D}/m.ml4m", f"{D}/no_energy.extxyz"],
    "test unknown element": ["test", f"{D}/m.ml4m", f"{D}/argon.extxyz"],
    "md garbage model": ["md", f"{D}/garbage.bin", f"{D}/start.extxyz"],
    "md missing structure": ["md", f"{D}/m.ml4m", f"{D}/nope.extxyz"],
    "md zero steps": ["md", f"{D}/m.ml4m", f"{D}/start.extxyz", "--steps", "0"],
    "md negative dt": ["md", f"{D}/m.ml4m", f"{D}/start.extxyz", "--dt", "-1"],
    "md nan temperature": ["md", f"{D}/m.ml4m", f"{D}/start.extxyz", "--temperature", "nan"],
    "md negative temperature": ["md", f"{D}/m.ml4m", f"{D}/start.extxyz", "--temperature", "-5"],
    "md unknown element": ["md", f"{D}/m.ml4m", f"{D}/argon.extxyz"],
    "md output is input": ["md", f"{D}/m.ml4m", f"{D}/start.extxyz", "-o", f"{D}/start.extxyz"],
    "relax negative fmax": ["relax", f"{D}/m.ml4m", f"{D}/start.extxyz", "--fmax", "-1"],
    "relax nan fmax": ["relax", f"{D}/m.ml4m", f"{D}/start.extxyz", "--fmax", "nan"],
    "relax output is model": ["relax", f"{D}/m.ml4m", f"{D}/start.extxyz", "-o", f"{D}/m.ml4m"],
}


def _snapshot(path):
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_exits_2_with_one_line_and_writes_nothing(work, capsys, name):
    before = _snapshot(work)
    code = main([a.replace("{d}", str(work)) for a in CASES[name]])
    _, err = capsys.readouterr()
    assert code == 2, f"exit {code}: {err}"
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(("ml4m: error:", "ml4m ")) and len(lines[-1]) < 600, err
    assert _snapshot(work) == before


def test_cases_cover_every_command():
    from ml4m.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    covered = {argv[0] for argv in CASES.values()}
    assert set(sub.choices) - covered <= {"quickstart"}, set(sub.choices) - covered
    assert json.dumps(CASES)  # plain data, printable in a report
