"""How an LLM user judges a student beside its teacher: greedy agreement on held-out prompts
and generation speed with the KV cache.

Agreement: both models continue the same prompts greedily; the token match rate is the share
of the first N generated positions where the student's token equals the teacher's, ROUGE-L
the F-measure of their longest common token subsequence. Speed: tokens/s of greedy decoding at
a fixed number of new tokens (batch 1 and batch 8), time to first token at batch 1; the models
are timed in turns, round after round, so machine noise hits both alike.
"""

import statistics
import time

import torch
from transformers import PreTrainedModel


def rouge_l(a: list[int], b: list[int]) -> float:
    """ROUGE-L F1 of two token sequences (longest common subsequence)."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


@torch.inference_mode()
def greedy(model: PreTrainedModel, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """(B, new_tokens) greedy continuation of equal-length prompts (no stop at EOS)."""
    out = model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=model.config.eos_token_id if model.config.pad_token_id is None else None,
    )
    return out[:, prompts.shape[1] :]


def agreement(
    student: PreTrainedModel, teacher_tokens: torch.Tensor, prompts: torch.Tensor
) -> dict[str, float]:
    """Student's greedy continuations against the teacher's (given, one row per prompt)."""
    new = teacher_tokens.shape[1]
    mine = greedy(student, prompts, new)
    match = (mine == teacher_tokens).float().mean().item()
    rouge = statistics.mean(
        rouge_l(a.tolist(), b.tolist()) for a, b in zip(mine, teacher_tokens, strict=True)
    )
    return {"token_match": round(match, 4), "rouge_l": round(rouge, 4), "new_tokens": new}


def generation_speed(
    models: dict[str, PreTrainedModel],
    prompt: torch.Tensor,
    new_tokens: int = 128,
    batch_sizes: tuple[int, ...] = (1, 8),
    rounds: int = 3,
) -> dict[str, dict[str, float]]:
    """``{name: {"tokens_per_s_bs1": .., "ttft_ms_bs1": ..}}``, medians over ``rounds``."""
    times: dict[str, dict[str, list[float]]] = {n: {} for n in models}
    for model in models.values():  # warm-up: first calls allocate and pick kernels
        greedy(model, prompt[:1], 4)
    for _ in range(rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            greedy(model, prompt[:1], 1)
            times[name].setdefault("ttft_ms_bs1", []).append((time.perf_counter() - t0) * 1e3)
            for b in batch_sizes:
                batch = prompt[:1].repeat(b, 1)
                t0 = time.perf_counter()
                greedy(model, batch, new_tokens)
                rate = b * new_tokens / (time.perf_counter() - t0)
                times[name].setdefault(f"tokens_per_s_bs{b}", []).append(rate)
    return {
        n: {k: round(statistics.median(v), 3) for k, v in per.items()} for n, per in times.items()
    }
