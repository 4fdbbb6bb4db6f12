"""The torch SOAP equals the numpy SOAP, and autograd equals the analytic gradients."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ml4m.descriptors import SOAP  # noqa: E402
from ml4m.descriptors import ACE  # noqa: E402
from ml4m.descriptors.torch_backend import TorchACE, TorchSOAP  # noqa: E402

from .conftest import alloy, dense_position_gradient  # noqa: E402


CASES = {
    "soap": lambda: (SOAP(["Cu", "Au"], r_cut=4.0, n_max=3, l_max=3), TorchSOAP),
    "soap_normalized": lambda: (SOAP(["Cu", "Au"], r_cut=4.0, n_max=3, l_max=3,
                                     normalize=True), TorchSOAP),
    "ace": lambda: (ACE(["Cu", "Au"], r_cut=4.0, n_max=2, l_max=2, correlation_order=4,
                        total_degree=7), TorchACE),
    "ace_pairs": lambda: (ACE(["Cu", "Au"], r_cut=4.0, n_max=3, l_max=2, correlation_order=3,
                              total_degree=[6, 6, 5], r0=1.2, r_in=1.2,
                              pair_r_in={"Au-Cu": 1.0, "Au-Au": 1.5}), TorchACE),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_torch_matches_numpy_and_gradients(case):
    desc, module = CASES[case]()
    atoms = alloy(seed=9, repeat=(1, 1, 1))
    ref = desc.compute(atoms, gradients=True)
    tm = module(desc)
    X, pos, cell = tm.features_and_inputs(atoms)
    assert not hasattr(tm, "last_positions")  # no state kept between calls
    np.testing.assert_allclose(X.detach().numpy(), ref.features, rtol=1e-11, atol=1e-13)
    # d(sum_i w . X_i)/d positions by autograd vs the analytic sparse gradients
    w = torch.as_tensor(np.random.default_rng(0).normal(size=X.shape))
    (X * w).sum().backward()
    dense = dense_position_gradient(ref, len(atoms), len(atoms))
    expected = np.einsum("iaxf,if->ax", dense, w.numpy())
    np.testing.assert_allclose(pos.grad.numpy(), expected, atol=1e-10)
    # homogeneous strain r -> (1 + eps) r of positions and cell rows:
    # dE/d eps_ab = sum_k dE/dr_ka r_kb + sum_c dE/dcell_ca cell_cb
    by_autograd = (pos.grad.T @ pos.detach() + cell.grad.T @ cell.detach()).numpy()
    analytic = np.einsum("iabf,if->ab", ref.strain_gradients, w.numpy())
    np.testing.assert_allclose(by_autograd, analytic, atol=1e-10)


def test_torch_spherical_harmonics_match_numpy():
    from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics

    v = np.random.default_rng(3).normal(size=(20, 3))
    Yn, _ = real_spherical_harmonics(v, 5)
    Yt, _ = real_spherical_harmonics(torch.as_tensor(v), 5)
    np.testing.assert_allclose(Yt.numpy(), Yn, atol=1e-14)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_soap_cuda():
    soap = SOAP(["Cu", "Au"], r_cut=4.0, n_max=3, l_max=3)
    atoms = alloy(seed=10, repeat=(1, 1, 1))
    X = TorchSOAP(soap, device="cuda").features(atoms)
    np.testing.assert_allclose(X.cpu().numpy(), soap.compute(atoms).features, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_ace_cuda():
    ace = ACE(["Cu", "Au"], r_cut=4.0, n_max=2, l_max=2, correlation_order=4, total_degree=7)
    atoms = alloy(seed=12, repeat=(1, 1, 1))
    X = TorchACE(ace, device="cuda").features(atoms)
    np.testing.assert_allclose(X.cpu().numpy(), ace.compute(atoms).features, atol=1e-12)


def test_torch_average_matches_numpy():
    soap = SOAP(["Cu", "Au"], r_cut=4.0, n_max=2, l_max=2, average=True)
    atoms = alloy(seed=13, repeat=(1, 1, 1))
    X = TorchSOAP(soap).features(atoms)
    np.testing.assert_allclose(X.numpy(), soap.compute(atoms).features, atol=1e-13)
