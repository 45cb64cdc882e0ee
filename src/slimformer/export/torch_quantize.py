"""PyTorch dynamic INT8 (nn.Linear weights int8, activations quantized per batch), for users who
stay in PyTorch. Dynamic quantization is a pure function of the fp32 weights, so the artifact is
the fp32 folder: ``load_int8`` rebuilds the same int8 model from it."""

import warnings

import torch
from transformers import PreTrainedModel


def quantize_torch_dynamic(model: PreTrainedModel) -> torch.nn.Module:
    """Return an int8 copy of ``model`` (Linear layers); the embeddings stay fp32."""
    with warnings.catch_warnings():
        # torch.ao eager quantization is deprecated in favour of torchao, but it is the path
        # that ships inside torch itself and runs on every CPU build.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model.eval(), {torch.nn.Linear}, dtype=torch.qint8, inplace=False
        )


def load_int8(folder: str, auto_class) -> torch.nn.Module:
    return quantize_torch_dynamic(auto_class.from_pretrained(folder))
