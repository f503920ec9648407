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
    """lm-eval's own HF model (`peft=` for a run's adapter) on the tasks; {task: {metric: value}}.

    A run with `adapter=False` is its base alone."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from studio.access import check_model_source, resolve_run
    from studio.inference import is_run_ref, run_adapter, run_base_model
    from studio.models import resolve_model_path

    tasks = check_tasks(tasks)
    if is_run_ref(ref):
        run = resolve_run(ref)
        model_args = {"pretrained": resolve_model_path(run_base_model(run))}
        if adapter:
            model_args["peft"] = str(run_adapter(run))
    else:
        model_args = {"pretrained": resolve_model_path(check_model_source(ref))}
    model_args.update(device="cuda" if torch.cuda.is_available() else "cpu", dtype="auto")
    local = all(t in LOCAL_TASKS for t in tasks)
    manager = TaskManager(include_path=str(LM_EVAL_DIR), include_defaults=not local)
    try:
        out = simple_evaluate(model="hf", model_args=model_args, tasks=[_lm_eval_task(t) for t in tasks],
                              limit=limit, batch_size=batch_size, task_manager=manager, log_samples=False,
                              verbosity="ERROR")
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
