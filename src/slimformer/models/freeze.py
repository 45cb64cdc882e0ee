"""Freeze the encoder (embeddings and every block) so only the task head trains: the first
step of a progressive schedule, where a fresh head must not tear up copied layers."""

from transformers import PreTrainedModel

from slimformer.models.arch import arch_of, find_module, layers_module_name


def freeze_encoder(model: PreTrainedModel) -> dict[str, int]:
    """Set ``requires_grad=False`` on the embeddings and blocks; returns parameter counts."""
    spec = arch_of(model.config)
    for module in (
        find_module(model, spec.embeddings),
        model.get_submodule(layers_module_name(model)),
    ):
        for p in module.parameters():
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable_params": trainable, "frozen_params": frozen}


def freeze_embeddings(model: PreTrainedModel) -> int:
    """Fix the input embeddings (an output head tied to them stays fixed with them); returns
    the number of parameters frozen."""
    weight = model.get_input_embeddings().weight
    weight.requires_grad_(False)  # an untied output head keeps training
    return weight.numel()
