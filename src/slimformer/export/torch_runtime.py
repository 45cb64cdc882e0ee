"""PyTorch deployment forms beyond eager fp32: bf16 weights, graphs compiled by inductor (with
freezing, so weights are pre-packed for oneDNN), and int8 through the x86 inductor quantizer
(PT2E), the path whose kernels reach VNNI/AMX. What runs a folder is written in its
``slimformer_runtime.json``; ``load_runtime_model`` rebuilds exactly that."""

import copy
import json
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from slimformer.config import StrictConfig
from slimformer.errors import ExportError

RUNTIME_FILE = "slimformer_runtime.json"
PROGRAM_FILE = "model.pt2"
TorchQuantization = Literal["none", "torch-dynamic", "pt2e-static", "pt2e-dynamic"]


class RuntimeSpec(StrictConfig):
    """How a saved variant is run: the serving side reads this, the optimizer writes it."""

    runtime: Literal["pytorch", "onnxruntime"]
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    quantization: str = "none"
    compiled: bool = False
    threads: int | None = Field(None, gt=0)


def read_runtime_spec(folder: Path) -> RuntimeSpec | None:
    path = Path(folder) / RUNTIME_FILE
    if not path.is_file():
        return None
    try:
        return RuntimeSpec(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise ExportError(
            f"{path} is not a valid runtime description ({exc}). Re-run optimize."
        ) from exc


def write_runtime_spec(folder: Path, spec: RuntimeSpec) -> None:
    (Path(folder) / RUNTIME_FILE).write_text(json.dumps(spec.model_dump(), indent=2) + "\n")


class InferenceModule(torch.nn.Module):
    """A compiled or exported graph behind the interface ``predict`` expects: ``.config``,
    keyword inputs, outputs with ``.logits``. Inputs the graph was exported with but the caller
    left out (``token_type_ids``) are filled with zeros, as the tokenizer would."""

    def __init__(self, inner, config, input_names: Iterable[str] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.config = config
        self.input_names = tuple(input_names or ())

    def forward(self, **inputs):
        for name in self.input_names:
            if name not in inputs and name == "token_type_ids":
                inputs[name] = torch.zeros_like(inputs["input_ids"])
        if self.input_names:
            inputs = {k: v for k, v in inputs.items() if k in self.input_names}
        return self.inner(**inputs)

    def train(self, mode: bool = True):
        # Exported graphs refuse train()/eval(); an inference module only ever runs in eval.
        self.training = False
        return self


def compile_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with freezing (constant-folds weights, pre-packs them for oneDNN) and
    automatic dynamic shapes: after the first new shape it recompiles once with symbolic batch
    and sequence sizes. (dynamic=True from the start breaks the int8 weight pre-packing.)"""
    import torch._inductor.config as inductor_config

    # Set globally rather than through compile(options=...): freezing must already be on when
    # the graph is lowered, and with options the int8 weight pre-packing is not folded.
    inductor_config.freezing = True
    return torch.compile(model)


def _dynamic_shapes(example: dict[str, torch.Tensor], max_seq: int) -> dict:
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=2, max=max_seq)
    return {k: {0: batch, 1: seq} for k in example}


def quantize_pt2e(
    model: torch.nn.Module,
    example: dict[str, torch.Tensor],
    calibration: Iterable[dict[str, torch.Tensor]],
    dynamic: bool,
) -> torch.export.ExportedProgram:
    """int8 Linear layers by torchao's X86InductorQuantizer (per-channel int8 weights; activations
    calibrated once (static) or per batch (dynamic)). Returns an exported program with dynamic
    batch and sequence axes that ``save_program`` writes and ``compile_for_inference`` runs."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    shapes = _dynamic_shapes(example, getattr(model.config, "max_position_embeddings", 512))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = torch.export.export(
            copy.deepcopy(model).eval(), args=(), kwargs=example, dynamic_shapes=shapes
        ).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_dynamic=dynamic))
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for batch in calibration if not dynamic else [example]:
                prepared(**{k: batch[k] for k in example})
        converted = convert_pt2e(prepared)
        return torch.export.export(converted, args=(), kwargs=example, dynamic_shapes=shapes)


def save_program(program: torch.export.ExportedProgram, folder: Path) -> None:
    torch.export.save(program, str(Path(folder) / PROGRAM_FILE))


def load_program(folder: Path) -> tuple[torch.nn.Module, list[str]]:
    """Load an exported graph (torch.export's own format: a JSON graph and tensor data, no
    pickled code), with the input names it was exported with."""
    program = torch.export.load(str(Path(folder) / PROGRAM_FILE))
    names = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind.name == "USER_INPUT"
    ]
    return program.module(), names


def build_torch_runtime(model: torch.nn.Module, spec: RuntimeSpec) -> torch.nn.Module:
    """Turn a loaded fp32 model into the form ``spec`` names (not for pt2e: those are saved)."""
    from slimformer.export.torch_quantize import quantize_torch_dynamic

    model = model.eval()
    if spec.precision == "bf16":
        model = model.to(torch.bfloat16)
    if spec.quantization == "torch-dynamic":
        model = quantize_torch_dynamic(model)
    elif spec.quantization != "none":
        raise ExportError(
            f"PyTorch quantization {spec.quantization!r} cannot be rebuilt from weights."
        )
    if spec.compiled:
        return InferenceModule(compile_for_inference(model), model.config)
    return model


def load_runtime_model(folder: Path, spec: RuntimeSpec, load_pretrained) -> torch.nn.Module:
    """The PyTorch model a variant folder describes. ``load_pretrained(folder)`` loads weights."""
    from transformers import AutoConfig

    if (Path(folder) / PROGRAM_FILE).is_file():
        graph, names = load_program(folder)
        runner = compile_for_inference(graph) if spec.compiled else graph
        return InferenceModule(runner, AutoConfig.from_pretrained(folder), names)
    return build_torch_runtime(load_pretrained(str(folder)), spec)
