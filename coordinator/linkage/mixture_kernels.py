"""Mixture fits compiled: the binned likelihood and scipy's Nelder-Mead steps in one numba loop per run.

A round's calibration makes ~30 fits (the round's, its higher floors', each agency pair's and the
bootstrap's refits), ~24,000 evaluations of the likelihood over ~90 bins at 4 x 100k. Written in
numpy, each evaluation cost ~60 us of Python and small-array overhead around ~30 us of arithmetic
(2.1 s of the round); here a run is one compiled call that releases the GIL, so a round's runs
also share both cores.

What is computed is what :class:`coordinator.linkage.mixture._Objective` and scipy's
``minimize(method="Nelder-Mead")`` compute, in the same order:

- the incomplete beta function is scipy's own (``scipy.special.cython_special.betainc``, the
  function behind ``scipy.special.betainc``), called through its C address: bit for bit the same;
- every sum is numpy's pairwise sum (:func:`~coordinator.linkage.numpy_sums.pairwise_sum`, bit for bit
  ``np.add.reduce``);
- ``exp`` and ``log`` are the C library's, where numpy's vectorised ones may differ in the last
  bit (in ~5% and ~0.4% of arguments on an AVX-512 CPU);
- the simplex is ordered by a stable sort, where numpy's ``argsort`` may order tied values
  otherwise.

So a value agrees with the numpy objective's to ~1e-15 relative, and a run ends where scipy's
ends up to its tolerances (``xatol`` 1e-4, ``fatol`` 1e-6): not bit for bit.
``tests/coordinator/test_calibration.py`` checks the likelihood against numpy's, the sums against
``np.add.reduce``, and the fits (likelihood at the optimum, count of true links, posterior)
against scipy's.
"""

# The Nelder-Mead steps follow SciPy's ``scipy/optimize/_optimize.py`` (``_minimize_neldermead``),
# which is distributed under this licence:
#
# Copyright (c) 2001-2002 Enthought, Inc. 2003, SciPy Developers. All rights reserved.
#
# Redistribution and use in source and binary forms, with or without modification, are permitted
# provided that the following conditions are met:
# 1. Redistributions of source code must retain the above copyright notice, this list of
#    conditions and the following disclaimer.
# 2. Redistributions in binary form must reproduce the above copyright notice, this list of
#    conditions and the following disclaimer in the documentation and/or other materials provided
#    with the distribution.
# 3. Neither the name of the copyright holder nor the names of its contributors may be used to
#    endorse or promote products derived from this software without specific prior written
#    permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
# IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
# FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
# CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
# DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
# DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER
# IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT
# OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import get_cython_function_address, intrinsic

from coordinator.linkage.mixture import _ALONE_SHARE, _EPS, _from_floor_bin
from coordinator.linkage.numpy_sums import pairwise_sum

__all__ = ["BETAINC", "Target", "negative_loglik", "run_nelder_mead", "target"]

#: What scipy's double-precision ``betainc`` is declared as (a ``cpdef`` function's C entry takes a flag too).
_BETAINC_DECLARATIONS = (b"double (double, double, double, int __pyx_skip_dispatch)",
                         b"double (double, double, double)")


def _betainc_address() -> int:
    """The C address of ``scipy.special.cython_special``'s double-precision ``betainc``.

    ``betainc`` is a fused function there: one C entry per argument type, named ``__pyx_fuse_<n>betainc``
    in an order scipy does not promise, so the entry is found by its declared C type.
    """
    import ctypes

    from scipy.special import cython_special

    name_of = ctypes.pythonapi.PyCapsule_GetName
    name_of.restype, name_of.argtypes = ctypes.c_char_p, [ctypes.py_object]
    for name, capsule in cython_special.__pyx_capi__.items():  # type: ignore[attr-defined]
        fused = name.startswith("__pyx_fuse_") and name.endswith("betainc") and name[11:-7].isdigit()
        if (name == "betainc" or fused) and name_of(capsule) in _BETAINC_DECLARATIONS:
            return get_cython_function_address("scipy.special.cython_special", name)
    raise ImportError("scipy.special.cython_special exports no double-precision betainc")


#: The address of scipy's double-precision ``betainc`` (the kernels pass a last argument, 0: skip
#: Python dispatch; ignored where the entry takes three). Passed to the kernels as a number, not
#: read as a global (nor as a ctypes function, which numba compiles in as a constant): the address
#: changes from process to process, and the kernels are cached.
BETAINC = _betainc_address()


@intrinsic
def _betainc_at(typingctx, address, a, b, x):  # noqa: ANN001, ANN202, ARG001
    """``betainc(a, b, x)`` through the function at ``address`` (:data:`BETAINC`), called from compiled code."""
    signature = types.float64(types.intp, types.float64, types.float64, types.float64)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
        where, a_, b_, x_ = args
        double = ir.DoubleType()
        function = ir.FunctionType(double, [double, double, double, ir.IntType(32)])
        pointer = builder.inttoptr(where, function.as_pointer())
        return builder.call(pointer, [a_, b_, x_, ir.Constant(ir.IntType(32), 0)])

    return signature, codegen

_LOG4, _LOG2000, _LOG5 = math.log(4.0), math.log(2000.0), math.log(5.0)


@dataclass(frozen=True)
class Target:
    """One histogram's likelihood, as the kernels read it: its bins from the floor's on.

    Attributes:
        counts: counts of the bins from the floor's on.
        capture: the blocking's capture of those bins (empty: none).
        clipped: the bin edges from the floor's bin's lower edge on, clipped to [0, 1].
        distance: each bin's midpoint less the floor bin's.
        bins: all bins of the histogram (the false links' decay is normalised over all of them).
        first: the floor's bin.
        noise: the variance of noise added to each count (0: exact counts).
    """

    counts: np.ndarray
    capture: np.ndarray
    clipped: np.ndarray
    distance: np.ndarray
    bins: int
    first: int
    noise: float


def target(counts: np.ndarray, first: int, capture: np.ndarray | None, noise: float) -> Target:
    """A histogram's :class:`Target` (``first``: its floor's bin), what ``mixture._Objective`` reads of it."""
    tail, captured, clipped, distance = _from_floor_bin(counts, np.linspace(0.0, 1.0, len(counts) + 1), first, capture)
    return Target(counts=np.ascontiguousarray(tail, dtype=np.float64),
                  capture=np.zeros(0) if captured is None else np.ascontiguousarray(captured, dtype=np.float64),
                  clipped=np.ascontiguousarray(clipped), distance=np.ascontiguousarray(distance), bins=len(counts),
                  first=first, noise=float(noise))


@njit(cache=True, nogil=True, inline="always")
def _sigmoid(x):  # noqa: ANN001, ANN202
    return 1.0 / (1.0 + math.exp(-min(max(x, -30.0), 30.0)))


@njit(cache=True, nogil=True)
def negative_loglik(betainc, x, pinned, counts, capture, clipped, distance, bins, first, noise, work):  # noqa: ANN001, ANN201, PLR0913
    """``_Objective(...)(params)`` at ``params = x`` (``[30.0, *x]`` when ``pinned``: true links alone).

    ``work``: scratch of at least ``2 * bins + 1`` floats (its values do not matter).
    """
    # _shape: (weight, exact share, a, b, decay rate) from the unconstrained parameters.
    at = 0
    if pinned:
        share = _ALONE_SHARE
    else:
        share = x[0]
        at = 1
    exact_raw, mean_raw, concentration, rate_raw = x[at], x[at + 1], x[at + 2], x[at + 3]
    weight = _sigmoid(share)
    exact = _sigmoid(exact_raw)
    mean = 0.6 + 0.4 * _sigmoid(mean_raw)
    kappa = math.exp(min(max(concentration, _LOG4), _LOG2000))
    a, b = mean * kappa, (1 - mean) * kappa
    rate = math.exp(min(max(rate_raw, _LOG5), 7.0))
    m = len(counts)
    # The beta's mass per bin: differences of the incomplete beta function at the clipped edges.
    beta = work[:m]
    previous = _betainc_at(betainc, a, b, clipped[0])
    for i in range(m):
        following = _betainc_at(betainc, a, b, clipped[i + 1])
        beta[i] = following - previous
        previous = following
    beta_in = max(pairwise_sum(beta, 0, m), _EPS)
    # The false links' decay over every bin (zeros below the floor), normalised over all of them.
    decay = work[m:m + bins]
    for i in range(first):
        decay[i] = 0.0
    for i in range(m):
        decay[first + i] = math.exp(-rate * distance[i])
    decay_total = max(pairwise_sum(decay, 0, bins), _EPS)
    mix = work[m + bins:2 * m + bins]
    for i in range(m):
        match = (1 - exact) * beta[i] / beta_in
        if i == m - 1:
            match += exact
        mix[i] = weight * match + (1 - weight) * (decay[first + i] / decay_total)
    if len(capture):
        for i in range(m):
            mix[i] = mix[i] * capture[i]
        total = max(pairwise_sum(mix, 0, m), _EPS)
        for i in range(m):
            mix[i] = mix[i] / total
    terms = work[:m]  # beta is read no more
    if noise > 0:
        observed = pairwise_sum(counts, 0, m)
        for i in range(m):
            expected = observed * max(mix[i], _EPS)
            variance = expected + noise
            terms[i] = 0.5 * (counts[i] - expected) ** 2 / variance + 0.5 * math.log(variance)
        return pairwise_sum(terms, 0, m)
    for i in range(m):
        terms[i] = counts[i] * math.log(max(mix[i], _EPS))
    return -pairwise_sum(terms, 0, m)


@njit(cache=True, nogil=True, inline="always")
def _order(sim, fsim):  # noqa: ANN001, ANN202
    """Sort the simplex's vertices by value, ties kept in place (stable insertion sort; n + 1 is small)."""
    for i in range(1, len(fsim)):
        value = fsim[i]
        row = sim[i].copy()
        j = i - 1
        while j >= 0 and fsim[j] > value:
            fsim[j + 1] = fsim[j]
            sim[j + 1] = sim[j]
            j -= 1
        fsim[j + 1] = value
        sim[j + 1] = row


@njit(cache=True, nogil=True)
def run_nelder_mead(betainc, x0, pinned, counts, capture, clipped, distance, bins, first, noise,  # noqa: ANN001, ANN201, PLR0913, PLR0912, PLR0915
                    maxiter, xatol, fatol):
    """The run of scipy's ``minimize(f, x0, method="Nelder-Mead", options=...)`` of :func:`negative_loglik`.

    Not adaptive, no bounds, no ``maxfev``: scipy's defaults. Returns ``(x, fun)``: the best vertex
    and the least value of the final simplex.
    """
    n = len(x0)
    work = np.empty(2 * len(counts) + bins + 1)
    sim = np.empty((n + 1, n))
    fsim = np.empty(n + 1)
    sim[0] = x0
    for k in range(n):
        y = x0.copy()
        if y[k] != 0:
            y[k] = (1 + 0.05) * y[k]
        else:
            y[k] = 0.00025
        sim[k + 1] = y
    for k in range(n + 1):
        fsim[k] = negative_loglik(betainc, sim[k], pinned, counts, capture, clipped, distance, bins, first, noise,
                                  work)
    _order(sim, fsim)
    iterations = 1
    xbar = np.empty(n)
    point = np.empty(n)
    other = np.empty(n)
    while iterations < maxiter:
        converged = True
        for j in range(1, n + 1):
            for i in range(n):
                if not abs(sim[j, i] - sim[0, i]) <= xatol:
                    converged = False
            if not abs(fsim[0] - fsim[j]) <= fatol:
                converged = False
        if converged:
            break
        for i in range(n):
            xbar[i] = sim[0, i]
        for j in range(1, n):
            for i in range(n):
                xbar[i] = xbar[i] + sim[j, i]
        for i in range(n):
            xbar[i] = xbar[i] / n
        # scipy's coefficients: rho = 1, chi = 2, psi = 0.5, sigma = 0.5.
        for i in range(n):
            point[i] = 2 * xbar[i] - 1 * sim[n, i]
        fxr = negative_loglik(betainc, point, pinned, counts, capture, clipped, distance, bins, first, noise, work)
        shrink = False
        if fxr < fsim[0]:
            for i in range(n):
                other[i] = 3 * xbar[i] - 2 * sim[n, i]
            fxe = negative_loglik(betainc, other, pinned, counts, capture, clipped, distance, bins, first, noise,
                                  work)
            if fxe < fxr:
                sim[n] = other
                fsim[n] = fxe
            else:
                sim[n] = point
                fsim[n] = fxr
        elif fxr < fsim[n - 1]:
            sim[n] = point
            fsim[n] = fxr
        else:
            if fxr < fsim[n]:
                for i in range(n):
                    other[i] = 1.5 * xbar[i] - 0.5 * sim[n, i]
                fxc = negative_loglik(betainc, other, pinned, counts, capture, clipped, distance, bins, first, noise,
                                      work)
                if fxc <= fxr:
                    sim[n] = other
                    fsim[n] = fxc
                else:
                    shrink = True
            else:
                for i in range(n):
                    other[i] = 0.5 * xbar[i] + 0.5 * sim[n, i]
                fxcc = negative_loglik(betainc, other, pinned, counts, capture, clipped, distance, bins, first,
                                       noise, work)
                if fxcc < fsim[n]:
                    sim[n] = other
                    fsim[n] = fxcc
                else:
                    shrink = True
            if shrink:
                for j in range(1, n + 1):
                    for i in range(n):
                        sim[j, i] = sim[0, i] + 0.5 * (sim[j, i] - sim[0, i])
                    fsim[j] = negative_loglik(betainc, sim[j], pinned, counts, capture, clipped, distance, bins,
                                              first, noise, work)
        iterations += 1
        _order(sim, fsim)
    return sim[0].copy(), fsim.min()
