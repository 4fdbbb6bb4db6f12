"""Building blocks: spherical harmonics, radial basis, splines, coupling tensors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.special import sph_harm_y

from ml4m.descriptors.coupling import real_clebsch_gordan
from ml4m.descriptors.cutoffs import smooth_cutoff
from ml4m.descriptors.radial import _quadrature, ace_radial_table, radial_basis, soap_radial_table
from ml4m.descriptors.spherical_harmonics import real_spherical_harmonics, spherical_harmonics_vjp


def _sphere_quadrature():
    z, wz = np.polynomial.legendre.leggauss(24)
    phi = np.linspace(0, 2 * np.pi, 49)[:-1]
    Z, P = np.meshgrid(z, phi, indexing="ij")
    w = np.repeat(wz, len(phi)) * (2 * np.pi / len(phi))
    s = np.sqrt(1 - Z**2)
    return np.stack([s * np.cos(P), s * np.sin(P), Z], -1).reshape(-1, 3), w


def test_spherical_harmonics_orthonormal_and_match_scipy():
    v, w = _sphere_quadrature()
    Y, _ = real_spherical_harmonics(3.1 * v, 6)
    np.testing.assert_allclose((Y * w[:, None]).T @ Y, np.eye(49), atol=1e-12)
    theta, phi = np.arccos(v[:, 2]), np.arctan2(v[:, 1], v[:, 0])
    np.testing.assert_allclose(Y[:, 12], sph_harm_y(3, 0, theta, phi).real, atol=1e-12)
    # m > 0: sqrt(2) (-1)^m Re Y_l^m (scipy includes the Condon-Shortley phase, ml4m not)
    np.testing.assert_allclose(Y[:, 14], np.sqrt(2) * sph_harm_y(3, 2, theta, phi).real,
                               atol=1e-12)
    np.testing.assert_allclose(Y[:, 13], -np.sqrt(2) * sph_harm_y(3, 1, theta, phi).real,
                               atol=1e-12)
    np.testing.assert_allclose(Y[:, 10], np.sqrt(2) * sph_harm_y(3, 2, theta, phi).imag,
                               atol=1e-12)


def test_spherical_harmonics_gradient():
    x = np.random.default_rng(0).normal(size=(6, 3))
    _, dY = real_spherical_harmonics(x, 5, gradients=True)
    h = 1e-6
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        num = (real_spherical_harmonics(x + e, 5)[0] - real_spherical_harmonics(x - e, 5)[0]) / (2 * h)
        np.testing.assert_allclose(dY[:, a], num, atol=1e-8)


@pytest.mark.parametrize("l_max", [0, 1, 3, 5])
def test_spherical_harmonics_vjp_equals_finite_differences(l_max):
    """The VJP without gradients equals sum_k w_k dY_k/dr by central differences."""
    rng = np.random.default_rng(l_max)
    x = rng.normal(size=(7, 3)) * rng.uniform(0.5, 4.0, size=(7, 1))
    w = rng.normal(size=(7, (l_max + 1) ** 2))
    h = 1e-6
    num = np.empty((7, 3))
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        dY = (real_spherical_harmonics(x + e, l_max)[0]
              - real_spherical_harmonics(x - e, l_max)[0]) / (2 * h)
        num[:, a] = np.sum(dY * w, axis=1)
    np.testing.assert_allclose(spherical_harmonics_vjp(x, l_max, w), num, atol=1e-8)


@pytest.mark.parametrize("n", [10, 24])
def test_radial_basis_orthonormal(n):
    r, w = _quadrature(4.5, 200)
    R = radial_basis(r, n, 4.5)
    np.testing.assert_allclose((R * (w * r**2)[:, None]).T @ R, np.eye(n), atol=1e-12)


@pytest.mark.parametrize("r0, n", [(None, 6), (1.0, 6), (1.0, 24)])
def test_ace_radial_inner_radius(r0, n):
    """With ``r_in`` the table is f_c(r) R_n(rho(r)), rho mapping [r_in, r_cut] onto
    [0, r_cut]; below r_in it is constant (no force); derivatives match differences
    (also at the largest ``n_max``, whose polynomials oscillate fastest)."""
    rc, r_in = 5.0, 0.8
    tab = ace_radial_table(n, rc, 1.0, r0, r_in)
    r = np.linspace(1.0, 4.9, 37)
    if r0 is None:
        rho = rc * (r - r_in) / (rc - r_in)
    else:
        u = lambda x: (r0 / (r0 + x)) ** 2  # noqa: E731
        rho = rc * (u(r_in) - u(r)) / (u(r_in) - u(rc))
    fc, _ = smooth_cutoff(r, rc, 1.0)
    val, der = tab(r)
    np.testing.assert_allclose(val, fc[:, None] * radial_basis(rho, n, rc), atol=1e-6)
    h = 1e-5
    np.testing.assert_allclose(der, (tab(r + h)[0] - tab(r - h)[0]) / (2 * h), atol=1e-4)
    low_val, low_der = tab(np.array([0.0, 0.3, 0.7]))
    np.testing.assert_allclose(low_val, np.repeat(radial_basis(np.zeros(1), n, rc), 3, axis=0),
                               atol=1e-9)
    np.testing.assert_allclose(low_der, 0.0, atol=1e-9)
    # the map is spent on the data's range: rho(r_in) = 0, so R_n(r_in) = R_n(0) of the plain basis
    assert np.max(np.abs(tab(np.array([r_in]))[0] - radial_basis(np.zeros(1), n, rc))) < 1e-6


def test_soap_radial_table_matches_quadrature():
    """Between the nodes the spline equals the radial integral I_nl (here f_c = 1)."""
    table = soap_radial_table(3, 2, 4.0, 0.5, 0.5)
    d = np.array([1.2345, 2.71828])
    val, _ = table(d)
    rq, wq = _quadrature(4.0, 400)
    R = radial_basis(rq, 3, 4.0)
    from scipy.special import spherical_in
    for k, dd in enumerate(d):
        for l in range(3):
            kern = 4 * np.pi * np.exp(-(rq**2 + dd**2) / 0.5) * spherical_in(l, rq * dd / 0.25)
            ref = (kern * rq**2 * wq) @ R
            np.testing.assert_allclose(val[k].reshape(3, 3)[:, l], ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("l1,l2,L", [(1, 1, 0), (1, 1, 1), (2, 1, 3), (2, 2, 2), (3, 2, 4)])
def test_real_clebsch_gordan_equivariant(l1, l2, L):
    C = real_clebsch_gordan(l1, l2, L)
    x = np.random.default_rng(1).normal(size=(3, 3))
    R = Rotation.random(random_state=2).as_matrix()

    def invariant(v):
        Y, _ = real_spherical_harmonics(v, max(l1, l2, L))
        a, b, c = Y[0, l1 * l1:(l1 + 1) ** 2], Y[1, l2 * l2:(l2 + 1) ** 2], Y[2, L * L:(L + 1) ** 2]
        return np.einsum("mnM,m,n,M->", C, a, b, c)

    assert abs(invariant(x)) > 1e-6
    assert abs(invariant(x @ R.T) - invariant(x)) < 1e-12
