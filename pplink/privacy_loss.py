"""Closed forms and OpenDP maps from a mechanism's noise scale to its privacy loss, and back.

Pure functions used by :mod:`pplink.accounting` (which composes losses against the budget) and
re-exported from it. OpenDP is imported lazily (:func:`opendp`), so ``pplink`` stays importable
where it is not installed (an agency node never needs it).
"""

from __future__ import annotations

import math
from enum import StrEnum
from functools import lru_cache
from types import SimpleNamespace

from pplink.errors import DependencyMissingError

__all__ = [
    "Mechanism",
    "count_measurement",
    "gaussian_rho",
    "laplace_epsilon",
    "opendp",
    "rho_for_epsilon",
    "zcdp_to_epsilon",
]

#: Above this rho, :func:`zcdp_to_epsilon` reports infinity instead of letting OpenDP overflow.
_RHO_UNBOUNDED = 1e5


class Mechanism(StrEnum):
    """The noise a release adds: Laplace under pure accounting, Gaussian under zCDP."""

    LAPLACE = "laplace"
    GAUSSIAN = "gaussian"


@lru_cache(maxsize=1)
def opendp() -> SimpleNamespace:
    """The parts of OpenDP the accounting uses, with the ``contrib`` feature enabled.

    Shaped like ``opendp.prelude`` (``dp.m``, ``dp.c``, ``dp.vector_domain``, ...), but built from
    the submodules: ``opendp.prelude`` also imports ``opendp.extras.sklearn``, which pulls in
    scikit-learn and SciPy when they are installed (about 3 s, against 0.4 s for these).

    Raises:
        DependencyMissingError: OpenDP is not installed.
    """
    try:
        import opendp.combinators as combinators
        import opendp.domains as domains
        import opendp.measurements as measurements
        import opendp.metrics as metrics
        from opendp.mod import enable_features
    except ImportError as exc:  # pragma: no cover - opendp is a core dependency
        raise DependencyMissingError(
            "privacy accounting needs OpenDP; install pplink with its default dependencies (opendp==0.16.0)"
        ) from exc
    # OpenDP gates every constructor we use behind "contrib" (see shared/FACTS.md).
    enable_features("contrib")
    return SimpleNamespace(
        m=measurements, c=combinators, vector_domain=domains.vector_domain, atom_domain=domains.atom_domain,
        l1_distance=metrics.l1_distance, l2_distance=metrics.l2_distance,
        absolute_distance=metrics.absolute_distance,
    )


def count_measurement(mechanism: Mechanism, scale: float):  # noqa: ANN202 - opendp.mod.Measurement
    """The measurement a release uses: integer noise added to a vector of integer counts.

    Laplace: ``make_laplace`` over ``vector_domain(atom_domain(T=int))`` and ``l1_distance(T=int)``
    (discrete Laplace, pure DP). Gaussian: ``make_gaussian`` over the same domain with
    ``l2_distance(T=int)`` (discrete Gaussian, zCDP). Building it draws no noise.
    """
    dp = opendp()
    if mechanism is Mechanism.LAPLACE:
        space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
        return dp.m.make_laplace(*space, scale=float(scale))
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int)
    return dp.m.make_gaussian(*space, scale=float(scale))


# --- closed forms -----------------------------------------------------------------------------


def laplace_epsilon(sensitivity: float, scale: float) -> float:
    """Pure-DP loss of the Laplace mechanism: ``sensitivity / scale``.

    >>> laplace_epsilon(1, 2.0)
    0.5
    >>> laplace_epsilon(9, 18.0)
    0.5
    """
    return sensitivity / scale


def gaussian_rho(sensitivity: float, scale: float) -> float:
    """The zCDP loss of the Gaussian mechanism: ``sensitivity**2 / (2 * scale**2)``.

    >>> gaussian_rho(1, 4.0)
    0.03125
    >>> gaussian_rho(3, 3.0)
    0.5
    """
    return sensitivity**2 / (2.0 * scale**2)


# --- OpenDP-derived losses --------------------------------------------------------------------


def zcdp_to_epsilon(rho: float, delta: float) -> float:
    """Convert a zCDP ``rho`` to the epsilon of (epsilon, delta)-DP, with OpenDP's conversion.

    OpenDP converts measurements, not numbers, so this wraps ``rho`` in a proxy Gaussian
    measurement whose privacy map at ``d_in = 1`` is ``rho`` (rounded up, so never below it) and
    converts that with ``make_zCDP_to_approxDP``. The conversion is tighter than the classic
    ``rho + 2 * sqrt(rho * ln(1 / delta))``.

    >>> round(zcdp_to_epsilon(1 / 32, 1e-6), 4)
    1.1429
    >>> zcdp_to_epsilon(0.0, 1e-6)
    0.0
    >>> zcdp_to_epsilon(1 / 32, 1e-6) < 1 / 32 + 2 * math.sqrt(1 / 32 * math.log(1e6))
    True
    """
    if rho == 0.0:
        return 0.0
    if rho > _RHO_UNBOUNDED:
        # OpenDP's conversion overflows; the epsilon is at least rho anyway, so it is unbounded in practice.
        return math.inf
    if not (rho > 0.0 and math.isfinite(rho)):
        raise ValueError(f"rho must be finite and non-negative, got {rho}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    dp = opendp()
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    proxy = dp.m.make_gaussian(*space, scale=1.0 / math.sqrt(2.0 * rho))
    return float(dp.c.make_zCDP_to_approxDP(proxy).map(1.0).epsilon(delta))


@lru_cache(maxsize=256)
def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """The largest rho whose (epsilon, delta) conversion does not exceed ``epsilon``.

    Found by bisection over :func:`zcdp_to_epsilon`, which is increasing in rho.

    >>> rho = rho_for_epsilon(1.1429257095713568, 1e-6)
    >>> abs(rho - 1 / 32) < 1e-9
    True
    >>> zcdp_to_epsilon(rho_for_epsilon(0.5, 1e-6), 1e-6) <= 0.5
    True
    """
    if not (epsilon > 0.0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be positive and finite, got {epsilon}")
    # rho <= epsilon always holds (the conversion adds a positive term to rho).
    lo, hi = 0.0, float(epsilon)
    for _ in range(200):
        mid = (lo + hi) / 2.0
        # A relative precision of 1e-13 in rho is far below anything the noise could notice.
        if mid in (lo, hi) or hi - lo <= 1e-13 * hi:
            break
        if zcdp_to_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
    return lo
