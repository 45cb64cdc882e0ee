"""Markdown rows for docs/benchmarks.md from causal-LM run folders' report.json.

python benchmarks/llm_table.py runs/smollm2-distill runs/smollm2-ce ...
"""

import json
import sys
from pathlib import Path


def row(folder: Path) -> str:
    r = json.loads((folder / "report.json").read_text())
    t, s = r["teacher"], r["student"]
    stage = r["stages"][-1]
    cache = stage.get("topk_cache") or {}
    train_s = sum(stage.get("epoch_seconds") or [0])
    gen = s["metrics"].get("generation_agreement", {})
    return (
        f"| {folder.name} | {stage.get('teacher_logits', 'none (CE)')} | {stage['steps']} | "
        f"{cache.get('fill_seconds', 0) / 60:.1f} + {train_s / 60:.1f} | "
        f"{t['metrics']['perplexity']:.2f} | {s['metrics']['perplexity']:.2f} | "
        f"**{r['perplexity_ratio']:.2f}x** | {s['metrics'].get('teacher_top1_agreement', 0):.3f} | "
        f"{gen.get('token_match', 0):.3f} / {gen.get('rouge_l', 0):.3f} | "
        f"{s['generation']['tokens_per_s_bs1']:.1f} vs {t['generation']['tokens_per_s_bs1']:.1f} "
        f"({r['speedup']['generate_bs1']:.2f}x) |"
    )


HEADER = (
    "| run | teacher logits | steps | minutes: cache fill + training | teacher ppl | student ppl "
    "| ratio | top-1 agreement | greedy token match / ROUGE-L | tokens/s bs1 student vs teacher |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)

if __name__ == "__main__":
    print(HEADER)
    for arg in sys.argv[1:]:
        print(row(Path(arg)))
