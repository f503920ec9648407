"""Evaluation: base vs tuned on the same rows, prompt suites, a judge, lm-eval tasks, per-method reports.

Every comparison is one linear path: pick the rows (a dataset's test split or a prompt suite) → for each
model (the base loaded on its own, then each run's adapter on that base) generate greedily in batches →
score with `studio.metrics` → save ``runs/<run>/eval/<name>.json`` (config, metrics, every row).
Everything a visitor names goes through `studio.access` first.

One module per thing it reports: `items` (rows and suites), `comparison` (base vs runs), `results` (saved
results), `judge`, `harness` (lm-evaluation-harness), and the per-method reports `lora_full` (LoRA vs full),
`dpo_margins` (DPO), `lapdog_table` (LAPDOG). Nothing here imports `studio.train`: what evaluation shares
with the trainers lives in `studio.pairs`, `studio.metrics` and `studio.persona`.
"""

from studio.evaluate.comparison import SCORE_KEY, compare, generate_items, plan_models
from studio.evaluate.dpo_margins import dpo_report
from studio.evaluate.harness import LM_EVAL_DIR, LOCAL_TASKS, lm_eval_compare, run_lm_eval
from studio.evaluate.items import ASSETS, RECIPE_SUITE, SUITES, Item, dataset_items, load_suite, suite_items
from studio.evaluate.judge import JUDGE_TEMPLATE, judge
from studio.evaluate.lapdog_table import PERSONA_ARMS, persona_report
from studio.evaluate.lora_full import lora_vs_full
from studio.evaluate.results import export_result, list_results, load_result, result_path, save_result

__all__ = ["ASSETS", "Item", "JUDGE_TEMPLATE", "LM_EVAL_DIR", "LOCAL_TASKS", "PERSONA_ARMS", "RECIPE_SUITE",
           "SCORE_KEY", "SUITES", "compare", "dataset_items", "dpo_report", "export_result", "generate_items",
           "judge", "list_results", "lm_eval_compare", "load_result", "load_suite", "lora_vs_full",
           "persona_report", "plan_models", "result_path", "run_lm_eval", "save_result", "suite_items"]
