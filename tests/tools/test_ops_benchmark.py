"""tools/benchmark.py ops: every kernel timed against torchvision's on the same inputs."""
import pytest

from detect.benchmark import ops
from detect.benchmark.ops import format_ops, run_ops_benchmark


def test_each_kernel_is_timed_in_both_passes_against_torchvision():
    result = run_ops_benchmark(rounds=1, repeats=1, cases=[("1x4x6x8 map, 6 RoIs", 1, 4, 6, 8, 8, 6, 40)])
    rows = result["rows"]
    assert [(r["kernel"], r["pass"]) for r in rows] == [(k, p) for k, _, _ in ops.KERNELS
                                                        for p in ("forward", "forward + backward")]
    for r in rows:
        assert r["detect_ms"] > 0 and r["torchvision_ms"] > 0
        assert r["ratio"] == pytest.approx(r["detect_ms"] / r["torchvision_ms"])
    assert "| 1x4x6x8 map, 6 RoIs | RoI max pool | forward + backward |" in format_ops(result)


def test_a_kernel_that_differs_from_torchvision_is_not_timed(monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.ops, "roi_pool", lambda f, rois, *a, **k: torchvision.ops.roi_align(
        f, rois, 7, spatial_scale=1 / 8, sampling_ratio=1, aligned=True) + 1.0)
    with pytest.raises(AssertionError, match="RoI max pool on 1x4x6x8 map, 6 RoIs: the package's kernel differs"):
        run_ops_benchmark(rounds=1, repeats=1, cases=[("1x4x6x8 map, 6 RoIs", 1, 4, 6, 8, 8, 6, 40)])
