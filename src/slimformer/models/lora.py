"""LoRA students (``peft``): the student's weights stay fixed and low-rank adapters train, so a
large student (or the teacher itself, for self-distillation) fits a small memory and optimizer
budget. After training the adapters are merged, so the saved folder is a plain model that
``AutoModel*.from_pretrained`` and ``pipeline()`` load without peft."""

from pathlib import Path

from pydantic import Field
from transformers import PreTrainedModel

from slimformer.config import StrictConfig

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(StrictConfig):
    r: int = Field(16, gt=0, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field(
        "all-linear",
        description="module names that get adapters, or 'all-linear' (every Linear but the "
        "output head), e.g. " + ", ".join(LLAMA_LINEAR),
    )


def add_lora(model: PreTrainedModel, cfg: LoraSettings):
    """The model wrapped with fresh adapters (base weights frozen), and a report entry."""
    from peft import LoraConfig, get_peft_model

    total = sum(p.numel() for p in model.parameters())
    wrapped = get_peft_model(
        model,
        LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
        ),
    )
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    return wrapped, {
        **cfg.model_dump(),
        "trainable_params": trainable,
        "base_params": total,
        "trainable_share": round(trainable / total, 5),
    }


def merged_from(wrapped, adapter_dir: Path) -> PreTrainedModel:
    """Load the adapters saved in ``adapter_dir`` (the kept checkpoint) into ``wrapped`` and
    merge them into the base weights."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(
        wrapped, load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    )
    return wrapped.merge_and_unload()
