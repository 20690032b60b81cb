"""tools/benchmark.py ops: every kernel timed against the library's on the same inputs."""
import pytest

from detect.benchmark import ops
from detect.benchmark.ops import format_ops, run_ops_benchmark


SMALL = dict(cases=[("1x4x6x8 map, 6 RoIs", 1, 4, 6, 8, 8, 6, 40)], norm_cases=[("2x8x5x7 map", 2, 8, 5, 7, 2)])


def test_each_kernel_is_timed_in_both_passes_against_the_librarys():
    result = run_ops_benchmark(rounds=1, repeats=1, **SMALL)
    rows = result["rows"]
    passes = ("forward", "forward + backward")
    expected = [(k, "torchvision", p) for k, _, _ in ops.KERNELS for p in passes]
    expected += [("GroupNorm, channels-last", ref, p) for ref, _ in ops.NORM_REFERENCES for p in passes]
    assert [(r["kernel"], r["reference"], r["pass"]) for r in rows] == expected
    for r in rows:
        assert r["detect_ms"] > 0 and r["reference_ms"] > 0
        assert r["ratio"] == pytest.approx(r["detect_ms"] / r["reference_ms"])
    text = format_ops(result)
    assert "| 1x4x6x8 map, 6 RoIs | RoI max pool | forward + backward |" in text
    assert "| 2x8x5x7 map | GroupNorm, channels-last | forward | " in text and "| F.group_norm, NCHW |" in text


def test_a_kernel_that_differs_from_torchvision_is_not_timed(monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.ops, "roi_pool", lambda f, rois, *a, **k: torchvision.ops.roi_align(
        f, rois, 7, spatial_scale=1 / 8, sampling_ratio=1, aligned=True) + 1.0)
    with pytest.raises(AssertionError, match="RoI max pool on 1x4x6x8 map, 6 RoIs: the package's kernel differs"):
        run_ops_benchmark(rounds=1, repeats=1, **SMALL)


def test_a_group_norm_that_differs_from_pytorchs_is_not_timed(monkeypatch):
    import torch.nn.functional as F

    original = F.group_norm
    monkeypatch.setattr(ops.F, "group_norm", lambda *a, **k: original(*a, **k) * 1.001)
    with pytest.raises(AssertionError, match="GroupNorm on 2x8x5x7 map: the package's kernel differs from "
                                             "F.group_norm, channels-last"):
        run_ops_benchmark(rounds=1, repeats=1, cases=[], norm_cases=SMALL["norm_cases"])
