"""Bad input raises a clear ConfigError / DataError naming the parameter or the frame."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from ml4m.cli.main import main
from ml4m.data.neighbors import neighbor_list
from ml4m.descriptors import ACE, ACSF, MBTR, SOAP, describe_frames
from ml4m.errors import ConfigError, DataError


def test_unknown_species_names_frame():
    desc = SOAP(["Cu"], r_cut=3.0, n_max=2, l_max=2)
    frames = [bulk("Cu", "fcc", a=3.6), bulk("Au", "fcc", a=4.0)]
    with pytest.raises(DataError, match=r"frame 1: element\(s\) Au \(Z=79\) not among"):
        desc.compute(frames)


@pytest.mark.parametrize("cls", [SOAP, ACSF, ACE, MBTR])
@pytest.mark.parametrize("r_cut", [0.0, -1.0, float("nan")])
def test_bad_r_cut(cls, r_cut):
    with pytest.raises(ConfigError, match="r_cut must be"):
        cls(["Cu"], r_cut=r_cut)


@pytest.mark.parametrize("kw,name", [({"n_max": 0}, "n_max"), ({"n_max": 21}, "n_max"),
                                     ({"l_max": -1}, "l_max"), ({"l_max": 13}, "l_max"),
                                     ({"n_max": 2.5}, "n_max")])
def test_soap_sizes_out_of_range(kw, name):
    with pytest.raises(ConfigError, match=f"{name} must be an integer"):
        SOAP(["Cu"], **kw)


@pytest.mark.parametrize("kw,name", [({"l_max": 7}, "l_max"), ({"correlation_order": 5},
                                     "correlation_order"), ({"n_max": 0}, "n_max")])
def test_ace_sizes_out_of_range(kw, name):
    with pytest.raises(ConfigError, match=f"{name} must be an integer"):
        ACE(["Cu"], **kw)


def test_acsf_bad_params():
    with pytest.raises(ConfigError, match="g4_params need"):
        ACSF(["Cu"], g4_params=[(0.1, 1.0, 0.5)])
    with pytest.raises(ConfigError, match="g2_params must be a list of 2-tuples"):
        ACSF(["Cu"], g2_params=[(0.1, 1.0, 3.0)])


def test_empty_structure():
    with pytest.raises(DataError, match="frame 0: structure has no atoms"):
        SOAP(["Cu"]).compute([Atoms()])


def test_nan_positions_and_zero_volume():
    bad = bulk("Cu", "fcc", a=3.6)
    bad.positions[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        ACSF(["Cu"]).compute(bad)
    flat = Atoms("Cu", cell=np.zeros((3, 3)), pbc=True)
    with pytest.raises(DataError, match="zero-volume"):
        ACSF(["Cu"]).compute(flat)


def test_unknown_species_symbol_and_name():
    with pytest.raises(ConfigError, match="species: unknown element 'Xx'"):
        SOAP(["Xx"])
    with pytest.raises(ConfigError, match="descriptor must be one of"):
        describe_frames([bulk("Cu")], "bessel")
    with pytest.raises(ConfigError, match="n_max does not apply to the acsf"):
        describe_frames([bulk("Cu")], "acsf", n_max=3)


def test_cli_exit_code_2(tmp_path, capsys):
    f = tmp_path / "cu.extxyz"
    bulk("Cu", "fcc", a=3.6).write(f)
    out = tmp_path / "o.npz"
    assert main(["describe", str(f), "--descriptor", "soap", "--r-cut", "-1", "-o", str(out)]) == 2
    assert "r_cut" in capsys.readouterr().err
    assert main(["describe", str(f), "--descriptor", "soap", "--species", "Au",
                 "-o", str(out)]) == 2
    assert "Cu (Z=29)" in capsys.readouterr().err
    assert main(["describe", str(f), "--descriptor", "soap", "--l-max", "20",
                 "-o", str(out)]) == 2
    assert "l_max" in capsys.readouterr().err
    assert not out.exists()


def test_memory_guard_refuses_before_work(tmp_path, capsys):
    import time

    f = tmp_path / "cu.extxyz"
    bulk("Cu", "fcc", a=3.6, cubic=True).write(f)
    out = tmp_path / "o.npz"
    t0 = time.perf_counter()
    assert main(["describe", str(f), "--descriptor", "soap", "--r-cut", "1e4",
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - t0 < 10  # was: no answer
    for part in ("SOAP descriptors of 4 atoms", "neighbours per atom", "r_cut = 10000 A",
                 "TB", "available", "--r-cut", "--max-memory"):
        assert part in err, (part, err)
    assert not out.exists()
    assert main(["describe", str(f), "--descriptor", "acsf", "--max-memory", "1kB",
                 "-o", str(out)]) == 2
    assert "limit of 1 kB (max_memory)" in capsys.readouterr().err and not out.exists()
    assert main(["describe", str(f), "--descriptor", "acsf", "--max-memory", "-3",
                 "-o", str(out)]) == 2
    assert "--max-memory" in capsys.readouterr().err


def test_memory_estimate_bounds_the_result():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    desc = SOAP(["Cu"], r_cut=4.0, n_max=3, l_max=3)
    plain, nn = desc.memory_estimate([cu])
    grads, _ = desc.memory_estimate([cu], gradients=True)
    res = desc.compute(cu, gradients=True)
    held = res.features.nbytes + res.gradients.nbytes + res.strain_gradients.nbytes
    assert held <= grads <= 20 * held and plain < grads
    assert nn == pytest.approx(len(neighbor_list(cu, 4.0)) / len(cu), rel=0.35)
    with pytest.raises(ConfigError, match="SOAP descriptors with gradients of 32 atoms"):
        desc.compute(cu, gradients=True, max_memory=int(held / 2))


def test_cutoff_far_beyond_a_molecule_is_fine():
    from ase.build import molecule

    res = ACSF(["C", "H", "O"], r_cut=1e4).compute(molecule("CH3CH2OH"))  # vesin: no answer
    assert np.all(np.isfinite(res.features))


def test_cli_output_is_claimed_before_work(tmp_path, capsys):
    f = tmp_path / "cu.npz.extxyz"
    bulk("Cu", "fcc", a=3.6).write(f, format="extxyz")
    before = f.read_bytes()
    # the output named as the input (".npz" appended when missing) is refused, input intact
    same = tmp_path / "in.npz"
    same.write_bytes(before)
    assert main(["describe", str(same), "--format", "extxyz", "--descriptor", "acsf",
                 "-o", str(same)]) == 2
    assert "is the input" in capsys.readouterr().err and same.read_bytes() == before
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    assert main(["describe", str(f), "--descriptor", "acsf", "-o", str(folder)]) == 2
    assert "existing folder" in capsys.readouterr().err
    out = tmp_path / "d.npz"
    for _ in range(2):  # a file output is replaced whole, with or without --overwrite
        assert main(["describe", str(f), "--descriptor", "acsf", "-o", str(out)]) == 0
    assert main(["describe", str(f), "--descriptor", "acsf", "-o", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cu.npz.extxyz", "d.npz", "folder.npz",
                                                          "in.npz"]
