"""Ship a model: ONNX export with a parity check, ONNX Runtime / PyTorch INT8 quantization."""
