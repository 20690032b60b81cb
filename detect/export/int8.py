"""int8 post-training static quantization of an exported detector (``tools/export.py --int8``).

ONNX Runtime's ``quantize_static`` in the QDQ format: weights int8 per output channel, activations
uint8 with ranges calibrated (min / max) on training images run through the graph. Quantized: the
convolutions (backbone, FPN, RPN head) and the box head's fully connected layers (``Conv``, ``MatMul``,
``Gemm``), which hold nearly all the multiply-adds. Left in float, and why:

- depthwise (grouped) convolutions (MobileNetV3's): ONNX Runtime's int8 depthwise kernel gains
  little over float and each one adds a quantize / dequantize pair; leaving them in float took the
  BCCD model from 68.6 to 61.1 ms per image and AP from 0.585 to 0.588 (fp32: 0.588);
- GroupNorm (``InstanceNormalization`` in the graph; the from-scratch recipe normalises with it) has
  no int8 kernel: its inputs are dequantized, which is most of what int8 does not win back;
- hard-swish / sigmoid / element-wise adds: quantizing them too (``Add``, ``Mul``) was measured
  slower, as every one adds a re-quantization between float neighbours;
- RoI align, NMS, box decoding and the softmax: small, and box coordinates need float precision.

PyTorch's own flows (eager ``torch.ao`` and PT2E) were not used: eager mode cannot quantize this
detector (pytorch#31316), and an int8 PyTorch graph would still need its own runtime to ship.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np

from detect.export.onnx_export import quiet_libraries
from detect.inference.onnx_backend import import_onnxruntime
from detect.errors import DatasetError, ImageReadError

logger = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def calibration_images(predictor, paths: Iterable[Union[str, Path]], limit: int) -> Iterator[np.ndarray]:
    """``(1, 3, H, W)`` float32 inputs of the graph for up to ``limit`` readable images among
    ``paths``, resized by ``predictor``'s test transform; unreadable files are reported and skipped."""
    from detect.data.image_io import read_image

    given = 0
    for path in paths:
        if given >= limit:
            return
        try:
            image = read_image(path)
        except ImageReadError as e:
            logger.warning("calibration image skipped: %s", e)
            continue
        given += 1
        yield predictor.prepare(image)[0][None].numpy()


def from_first_readable(paths: Sequence[Union[str, Path]], source: str) -> List[Union[str, Path]]:
    """``paths`` from the first that reads as an image on (those before it reported and dropped);
    :class:`DatasetError` when none does. Run before an export, so that a calibration set that
    cannot serve stops the command before it writes anything."""
    from detect.data.image_io import read_image

    for i, path in enumerate(paths):
        try:
            read_image(path)
            return list(paths[i:])
        except ImageReadError as e:
            logger.warning("calibration image skipped: %s", e)
    raise no_calibration_image(source)


def no_calibration_image(source: str) -> DatasetError:
    return DatasetError(f"{source}: no readable calibration image; int8 calibration needs at least one")


def quantize_onnx(fp32_path: Union[str, Path], output: Union[str, Path], images: Iterable[np.ndarray],
                  source: str = "the calibration set", per_channel: bool = True,
                  reduce_range: Optional[bool] = None) -> dict:
    """Write the int8 model of ``fp32_path`` to ``output`` (metadata kept); ``images`` are the
    calibration inputs (from ``source``, named in errors). ``reduce_range`` (7-bit weights) defaults to on where the CPU has no VNNI
    instructions: without them the u8 x s8 products saturate in 16 bits (ONNX Runtime's advice).
    Depthwise convolutions stay in float (module docstring). Returns ``{"path", "bytes",
    "calibration_images", "quantized_ops", "float_depthwise_convs", "reduce_range"}``."""
    import_onnxruntime()  # a one-line error naming the extra when it is missing
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    images = iter(images)
    first = next(images, None)
    if first is None:  # checked here: ONNX Runtime's own error ("No data is collected") names nothing
        raise no_calibration_image(source)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.count = 0
            self.images = itertools.chain([first], images)

        def get_next(self):
            image = next(self.images, None)
            if image is None:
                return None
            self.count += 1
            return {"image": image}

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    depthwise = grouped_convolutions(fp32_path)
    reader = Reader()
    output = Path(output)
    tmp = output.with_name(output.name + ".tmp")
    with quiet_libraries():
        quantize_static(str(fp32_path), str(tmp), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=per_channel,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=depthwise)
    tmp.replace(output)
    return {"path": str(output), "bytes": output.stat().st_size, "calibration_images": reader.count,
            "quantized_ops": list(QUANTIZED_OPS), "float_depthwise_convs": len(depthwise),
            "reduce_range": reduce_range}


def grouped_convolutions(path: Union[str, Path]) -> List[str]:
    """Names of the ``Conv`` nodes of the model at ``path`` with ``group > 1`` (depthwise)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Conv"
            and next((a.i for a in n.attribute if a.name == "group"), 1) > 1]


def cpu_has_vnni() -> bool:
    """True when the CPU has AVX-512 VNNI or AVX-VNNI (int8 dot products without saturation)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: ONNX Runtime's default
    return "avx512_vnni" in flags or "avx_vnni" in flags
