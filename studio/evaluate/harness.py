"""lm-evaluation-harness tasks (the bundled local ones or the harness's own) on the base and on each run."""

from __future__ import annotations

from studio.errors import StudioError
from studio.evaluate.comparison import plan_models
from studio.evaluate.items import ASSETS


LM_EVAL_DIR = ASSETS / "lm_eval"
LOCAL_TASKS = {p.stem: p for p in sorted(LM_EVAL_DIR.glob("*.yaml"))}


def check_tasks(tasks: list[str]) -> list[str]:
    """Task names through studio.access: on a shared studio only the bundled task and names in lm-eval's own
    index pass (lm-eval reads a name it does not know as a YAML path, whose `!function` imports code)."""
    from studio.access import resolve

    tasks = [resolve("task", t) for t in tasks if t and str(t).strip()]
    if not tasks:
        raise StudioError("lm-eval: name at least one task")
    return tasks


def _lm_eval_task(task: str):
    """A shipped local task as a config dict (its data file resolved here), or a harness task name."""
    import yaml

    if task in LOCAL_TASKS:
        cfg = yaml.safe_load(LOCAL_TASKS[task].read_text("utf-8"))
        files = cfg.get("dataset_kwargs", {}).get("data_files", {})
        cfg["dataset_kwargs"]["data_files"] = {k: str(LM_EVAL_DIR / v) for k, v in files.items()}
        return cfg
    return task


def run_lm_eval(ref: str, tasks: list[str], limit: int | None = None, batch_size: int = 8, adapter: bool = True) -> dict:
    """lm-eval on the model the studio's cache holds for `ref` (a run's adapter on its base, or with
    `adapter=False` its base alone); {task: {metric: value}}.

    The model is the very object Evaluate, chat and labelling use (studio.model_cache, read-only): lm-eval's own
    loader would hold a second copy beside it (1,753 vs 1,210 MB peak RSS for SmolLM2, the same metrics).
    HFLM takes a loaded model, a PeftModel included (it only calls it, `generate`s with it, and sets eval mode,
    which a cached model is in already); it gets a copy of the tokenizer, since it may set a pad token on it."""
    import copy

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from studio.inference import load_for_inference

    tasks = check_tasks(tasks)
    loaded = load_for_inference(ref, adapter=adapter, cached=True)  # the access check happens here (resolve_ref)
    lm = HFLM(pretrained=loaded.model, tokenizer=copy.deepcopy(loaded.tokenizer), batch_size=batch_size)
    local = all(t in LOCAL_TASKS for t in tasks)
    manager = TaskManager(include_path=str(LM_EVAL_DIR), include_defaults=not local)
    try:
        out = simple_evaluate(model=lm, tasks=[_lm_eval_task(t) for t in tasks], limit=limit,
                              task_manager=manager, log_samples=False, verbosity="ERROR")
    except (KeyError, ValueError) as e:
        raise StudioError(f"lm-eval: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                          f"(local tasks: {', '.join(LOCAL_TASKS)}; Hub tasks need a connection)") from None
    return {task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "alias"}
            for task, metrics in out["results"].items()}


def _each_model(columns: list[dict], tasks: list[str], limit: int | None) -> dict:
    from studio.work import checkpoint

    results = {}
    for col in columns:
        checkpoint()
        results[col["label"]] = run_lm_eval(col["ref"], tasks, limit, adapter=col["adapter"])
    return results


def lm_eval_compare(refs: list[str], tasks: list[str], limit: int | None = None) -> dict:
    """The same tasks on the base (alone) and on each run: a table with one line per model and task."""
    from studio.work import heavy

    tasks = check_tasks(tasks)  # before any model is loaded
    columns = plan_models(refs)
    headers, rows = ["model", "task"], []
    # heavy work (studio.work): queued, billed, low priority; lm-eval's own loops have no checkpoint, so a call
    # whose page is gone is stopped in its thread (studio.work.Stop) at its next Python step
    results = heavy("lm-eval", _each_model, columns, tasks, limit)
    metric_names = sorted({m for r in results.values() for t in r.values() for m in t})
    headers += metric_names
    for label, per_task in results.items():
        for task, metrics in per_task.items():
            rows.append([label, task, *[round(metrics[m], 4) if m in metrics else None for m in metric_names]])
    return {"headers": headers, "rows": rows, "results": results}
