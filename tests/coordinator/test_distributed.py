"""Comparing on Ray (a local cluster on 127.0.0.1) gives exactly the local match's results."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from coordinator.linkage.blocking import BlockingConfig
from coordinator.linkage.distributed import RAY_INSTALL_HINT, import_ray, match_clks_on_ray
from coordinator.linkage.match import match_clks
from pplink.errors import DependencyMissingError, MatchError


def _people(rng: np.random.Generator, agencies: int, people: int, rows: int) -> list[np.ndarray]:
    """Noisy copies of a shared population: many true pairs across agencies, plus strangers."""
    base = np.packbits(rng.random((people, 512)) < 0.33, axis=1)
    out = []
    for _ in range(agencies):
        picked = base[rng.choice(people, rows, replace=False)]
        out.append(picked ^ np.packbits(rng.random((rows, 512)) < 0.03, axis=1))
    return out


def test_ray_refuses_when_not_initialised() -> None:
    """Without ray.init the call refuses with a MatchError instead of starting a cluster by itself."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # runs before the module's cluster starts (tests run in file order)
    with pytest.raises(MatchError, match="Ray is not initialised"):
        match_clks_on_ray([np.zeros((2, 8), np.uint8)] * 2, 0.8)


@pytest.fixture(scope="module")
def ray_cluster():  # type: ignore[no-untyped-def]
    ray = pytest.importorskip("ray")
    # Under `uv run`, Ray would package this checkout and start every worker through uv; the
    # workers share this environment anyway.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        patch.setenv("RAY_AUTH_MODE", "disabled")
        yield from _cluster(ray)


def _cluster(ray):  # type: ignore[no-untyped-def]
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_match_equals_local_match(ray_cluster) -> None:  # type: ignore[no-untyped-def]
    """Labels, comparisons, candidate pairs, blocking stats and histogram are identical to the local
    match, whatever the task size."""
    datasets = _people(np.random.default_rng(12), 3, 900, 600)
    blocking = BlockingConfig(bits_per_band=12, bands=12, max_bucket_pairs=60)
    local = match_clks(datasets, 0.75, blocking=blocking, workers=2)
    assert local.stats.candidate_pairs > 500 and local.stats.blocking.buckets_split > 0
    for per_task in (1, 5):
        remote = match_clks_on_ray(datasets, 0.75, blocking=blocking, bands_per_task=per_task)
        assert all(np.array_equal(a, b) for a, b in zip(local.labels, remote.labels, strict=True))
        assert remote.histogram == local.histogram
        for field in ("comparisons", "candidate_pairs", "clusters", "linked_records", "blocking"):
            assert getattr(remote.stats, field) == getattr(local.stats, field)


def test_missing_ray_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray stays optional: without it the error names the extra to install."""
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(DependencyMissingError, match=r"pplink\[ray\]") as caught:
        import_ray()
    assert str(caught.value) == RAY_INSTALL_HINT
