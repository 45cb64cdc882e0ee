"""``slimformer generate``: the teacher answers a prompt set, for sequence-level KD (Kim & Rush
2016): the student then trains on the teacher's answers as prompt/response data.

Batched generation with the KV cache and left padding; the sampling settings, the model and
the speed are written beside the answers (``generation.json``), so the set can be reproduced.
Output: ``DIR/generations.jsonl`` with ``prompt`` and ``response`` per line, written atomically.
"""

import json
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from slimformer.data.chat_pairs import pad_id, prompt_text, read_pairs
from slimformer.data.lm_corpus import read_text
from slimformer.errors import DataError, OutputExistsError
from slimformer.models.loading import check_model_ref, load_tokenizer
from slimformer.tasks.causal_lm import CausalLM
from slimformer.utils.atomic import atomic_dir

log = logging.getLogger("slimformer")
GENERATIONS = "generations.jsonl"


def read_prompts(source: str, prompt_column: str, max_prompts: int | None) -> list[str]:
    """Prompts from a table (its ``prompt_column``) or a text file (one prompt a line)."""
    path = Path(source)
    if path.suffix.lower() in (".txt", ".text") and path.is_file():
        prompts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    else:
        prompts = [str(p) for p in read_pairs(source, prompt_column, None)[prompt_column]]
    if not prompts:
        raise DataError(f"The prompt set {source} holds no prompts.")
    return prompts[:max_prompts] if max_prompts else prompts


def generate_responses(
    teacher: str,
    prompts: str,
    output: str | Path,
    prompt_column: str = "prompt",
    max_new_tokens: int = 128,
    batch_size: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    chat_template: bool = True,
    max_prompts: int | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> dict:
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output} exists. Pass --overwrite or choose another --output.")
    texts = read_prompts(prompts, prompt_column, max_prompts)  # input checks before loading
    ref = check_model_ref(teacher)
    tokenizer = load_tokenizer(ref, trust_remote_code)
    model = CausalLM().load_model(ref, trust_remote_code=trust_remote_code).eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of each row
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    settings = {
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "temperature": temperature if do_sample else None,
        "top_p": top_p if do_sample else None,
        "seed": seed,
        "chat_template": bool(chat_template and getattr(tokenizer, "chat_template", None)),
        "batch_size": batch_size,
    }
    torch.manual_seed(seed)
    rows, new_tokens, started = [], 0, time.perf_counter()
    for start in tqdm(range(0, len(texts), batch_size), desc="generate", unit="batch"):
        batch = texts[start : start + batch_size]
        enc = tokenizer(
            [prompt_text(tokenizer, p, chat_template) for p in batch],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        with torch.inference_mode():
            out = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=top_p if do_sample else None,
                pad_token_id=pad_id(tokenizer),
            )
        answers = out[:, enc["input_ids"].shape[1] :]
        for prompt, ids in zip(batch, answers, strict=True):
            ids = [int(t) for t in ids if int(t) != pad_id(tokenizer)]
            new_tokens += len(ids)
            rows.append(
                {
                    "prompt": prompt,
                    "response": tokenizer.decode(ids, skip_special_tokens=True).strip(),
                }
            )
    seconds = time.perf_counter() - started
    info = {
        "teacher": teacher,
        "prompts": prompts,
        "examples": len(rows),
        "new_tokens": new_tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(new_tokens / seconds, 2),
        "settings": settings,
    }
    with atomic_dir(output) as tmp:
        with open(tmp / GENERATIONS, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (tmp / "generation.json").write_text(json.dumps(info, indent=2))
    log.info("wrote %d teacher answers to %s", len(rows), output / GENERATIONS)
    return info
