"""Quantization methods that train: fake quantization with ONNX Runtime's INT8 arithmetic (QAT)."""
