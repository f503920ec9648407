"""Training methods: one short linear path each, run inside a `Job`'s thread."""

from __future__ import annotations


def run_method(job, resume: bool = False) -> None:
    method = job.recipe.method
    if method == "sft":
        from studio.train.sft import run_sft

        return run_sft(job, resume=resume)
    if method == "dpo":
        from studio.train.dpo import run_dpo

        return run_dpo(job, resume=resume)
    if method == "lapdog":
        from studio.train.lapdog import run_lapdog

        return run_lapdog(job, resume=resume)
    if method == "grpo":
        from studio.train.grpo import run_grpo

        return run_grpo(job, resume=resume)
    from studio.errors import StudioError

    raise StudioError(f"method '{method}' is not available in this version of the studio")
