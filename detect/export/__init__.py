"""How a model leaves Python: ONNX export and int8 quantization (the ONNX Runtime backend that runs
the files is in ``detect.inference.onnx_backend``)."""
