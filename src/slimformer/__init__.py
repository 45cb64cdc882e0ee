"""slimformer: make Transformer NLP models small and fast, measured beside the teacher."""

__version__ = "0.1.0"

import logging as _logging

# transformers imports torchao whenever it is installed; torchao's CPU wheel then logs that its
# CUDA kernels did not load, and torch logs a deprecation about torchao's enums. Neither
# concerns CPU inference, and the lines would otherwise open every command's output.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
