"""The bundled verifiable task: arithmetic word problems with their numeric answers, generated from a seed.

`assets/samples/arithmetic.jsonl` is this module's output (`python -m studio.data.arithmetic`); a test keeps the
two equal. Rows are {"prompt", "solution"}: the columns TRL's GRPO reward functions read. One operation each
(add, take away, multiply, share), numbers a 135M model gets right about a third of the time greedily, so
rewards have room to climb on a CPU.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Sam", "Mia", "Ravi", "Lena", "Tom", "Aiko", "Omar", "Zoe", "Ines", "Kofi", "Nora", "Yusuf"]
ITEMS = ["apples", "stickers", "marbles", "books", "pencils", "coins", "shells", "cards", "cookies", "stamps"]
ASK = " Give the final answer as a number on the last line."
PATH = Path(__file__).resolve().parents[2] / "assets" / "samples" / "arithmetic.jsonl"


def problem(rng: random.Random) -> tuple[str, int]:
    name, item, op = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(["add", "sub", "mul", "div"])
    if op == "add":
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b
    if op == "sub":
        a = rng.randint(10, 60)
        b = rng.randint(1, a - 1)
        return f"{name} had {a} {item} and gave {b} away. How many {item} does {name} have left?", a - b
    a, b = rng.randint(2, 12), rng.randint(2, 10)
    if op == "mul":
        return f"Each bag holds {a} {item}. How many {item} are in {b} bags?", a * b
    return f"{name} shares {a * b} {item} equally among {b} friends. How many {item} does each friend get?", a


def make(rows: int = 1000, seed: int = 7) -> list[dict]:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < rows:
        question, answer = problem(rng)
        if question in seen:
            continue
        seen.add(question)
        out.append({"prompt": question + ASK, "solution": str(answer)})
    return out


def write(path: Path = PATH, rows: int = 1000, seed: int = 7) -> None:
    meta = {"_meta": {"made_by": "python -m studio.data.arithmetic (generated, seed 7)",
                      "how": "one-operation word problems; solution = the numeric answer", "rows": rows}}
    lines = [json.dumps(meta)] + [json.dumps(r) for r in make(rows, seed)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write()
    print(f"wrote {PATH}")
