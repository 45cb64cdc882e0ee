"""Build the prompt set for sequence-level KD from the shared data: instructions from
WikiText-2 (valid split) article titles and their section headings, e.g. "Write a short
encyclopedia paragraph about Homarus gammarus." or "Write a short paragraph about the
description of Homarus gammarus." The test split (the perplexity text) is never read.

    python benchmarks/llm_prompts.py ../shared/data/text/wikitext2/wiki.valid.tokens \
        runs/llm-prompts.jsonl --max 64
"""

import argparse
import json
import re
from pathlib import Path

TITLE = re.compile(r"^ = ([^=].*[^=]) = $")
SECTION = re.compile(r"^ = = ([^=].*[^=]) = = $")


def _clean(text: str) -> str:
    return text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".").strip()


def prompts(path: Path) -> list[str]:
    """One prompt per article title, then one per (section, title), in file order."""
    by_title, by_section, title = [], [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := TITLE.match(line):
            title = None if "<unk>" in m.group(1) else _clean(m.group(1))
            if title:
                by_title.append(f"Write a short encyclopedia paragraph about {title}.")
        elif (m := SECTION.match(line)) and title and "<unk>" not in m.group(1):
            section = _clean(m.group(1)).lower()
            by_section.append(f"Write a short paragraph about the {section} of {title}.")
    return by_title + by_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--max", type=int, default=64)
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": p} for p in prompts(args.source)]
    with open(args.output, "w", encoding="utf-8") as f:
        for row in rows[: args.max]:
            f.write(json.dumps(row) + "\n")
    print(f"{min(len(rows), args.max)} prompts -> {args.output}")


if __name__ == "__main__":
    main()
