"""GRPO from verifiable rewards with LoRA: one linear path handing the work to TRL's GRPOTrainer.

Prompts with references (the `solution` column TRL's reward functions read) → the menu's reward functions
(`studio.rewards`) → GRPOTrainer samples `num_generations` completions per prompt, scores them and pushes
towards the better ones of each group. From the base model (a fresh adapter) or from an SFT run's adapter
(`init_adapter`). After training: base and tuned answer the held-out prompts, scored by the same rewards,
with intervals over prompts (`heldout_rewards.json`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from studio.errors import StudioError
from studio.inference import init_adapter_run, is_instruct, marked_reply
from studio.runs import DONE
from studio.train.common import (keep_trackers_in_run, parallel_summary, policy_model, quiet_trainer, stopped_summary,
                                 train_job, use_trackers, write_summary)
from studio.train.progress import make_callback, save_adapter

HELDOUT_PROMPTS = 200  # held-out prompts scored after training (studio.heldout_prompts changes it)
SHOWN_COMPLETIONS = 8  # the latest sampled completions the page shows, with their rewards
SHOWN_CHARS = 600


def grpo_dataset(split, chat: bool):
    """Rendered prompt/completion rows → TRL's GRPO columns: `prompt` (one user message for an instruct model,
    so TRL applies its chat template) and `solution` (the reference the reward functions read)."""
    def to_grpo(row):
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(completion, list):
            completion = "".join(str(m.get("content") or "") for m in completion)
        if chat and isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        return {"prompt": prompt, "solution": str(completion).strip()}

    return split.map(to_grpo, remove_columns=split.column_names)


def load_reward_data(recipe, seed: int, log=print):
    from studio.data import prepare_dataset

    ds = recipe.dataset
    data = prepare_dataset(ds["source"], ds.get("format"), ds.get("template"), config=ds.get("config"),
                           split=ds.get("split"), splits=ds.get("splits", "80/10/10"), seed=seed,
                           max_rows=ds.get("max_rows"), streaming=bool(ds.get("streaming")), cache=True,
                           group_by=ds.get("group_by"))
    if data.format.kind != "prompt_completion":
        raise StudioError(f"{data.source}: GRPO needs prompts with references (prompt/solution, question/answer or "
                          f"prompt/completion); this data is {data.format.label}")
    log(f"data: {data.source} as {data.format.name}, {data.rows} prompts, {data.dropped_total} dropped, "
        f"splits {', '.join(f'{k} {len(v)}' for k, v in data.splits.items())} ({data.split_line()})")
    return data


def heldout_rows(recipe, data, seed: int, log=print):
    """The prompts a run is judged on: dataset.eval_source when set, else the test split, else validation."""
    from studio.data import heldout_data

    held = heldout_data(recipe.dataset, seed)
    if held is not None:
        return f"dataset.eval_source {held.source}", held.splits["test"]
    for name in ("test", "validation"):
        if name in data.splits and len(data.splits[name]):
            return f"the {name} split", data.splits[name]
    log("no held-out prompts: the data is too small for a test split; no before/after reward table")
    return None, None


def build_grpo_trainer(recipe, run_dir: Path, log=print, callbacks=(), emit=None):
    """seed → tokenizer → prompts → model (fresh adapter or the SFT run's) → rewards → GRPOTrainer. `emit` (a job's)
    receives the latest sampled completions after each log."""
    import torch
    from transformers import set_seed
    from trl import GRPOTrainer

    from studio.models import load_tokenizer
    from studio.rewards import build, describe

    seed = int(recipe.train.get("seed", 42))
    set_seed(seed)
    model_args = recipe.model_config()
    init_run = init_adapter_run(recipe)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    data = load_reward_data(recipe, seed, log)
    chat = is_instruct(tokenizer)
    train = grpo_dataset(data.splits["train"], chat)
    log(f"prompts asked {'through the chat template' if chat else 'as raw text'}")

    funcs, weights, _names = build(recipe.header.get("rewards"), recipe.header.get("reward_code"))
    recipe.train.setdefault("reward_weights", weights)
    log(f"rewards: {describe(recipe.header.get('rewards'), recipe.header.get('reward_code'))} "
        "(TRL sums them with these weights, then compares each completion with its group)")

    model, peft_config = policy_model(recipe, model_args, init_run, log)
    if init_run is not None:
        log(f"starting from {init_run.name}'s adapter")
    else:
        log("starting from the base model: a fresh adapter" + (
            "; the KL reference is the base (adapter off)" if float(recipe.train.get("beta", 0.0)) else ""))
    recipe.train.setdefault("train_sampling_strategy", "random")  # prompts have no input_ids to group by length
    if recipe.train.get("activation_checkpointing") is None and recipe.train.get("gradient_checkpointing") is None:
        recipe.train["activation_checkpointing"] = False  # TRL turns it on by default; it costs ~30 % a step
        log("gradient checkpointing off (set activation_checkpointing: true when memory is short)")
    for note in use_trackers(recipe, run_dir):
        log(note)
    args, notes = recipe.training_config(run_dir / "checkpoints")
    for note in notes:
        log(note)
    if not torch.cuda.is_available() and args.use_vllm:
        raise StudioError("use_vllm: vLLM needs a GPU; set use_vllm: false on a CPU")
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=train,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    if emit is not None:
        trainer.add_callback(completions_callback(trainer, emit))
    keep_trackers_in_run(trainer, run_dir)
    quiet_trainer(trainer)
    return trainer, tokenizer, data


def _plain(prompt) -> str:
    if isinstance(prompt, list):
        return next((str(m.get("content") or "") for m in reversed(prompt) if m.get("role") == "user"), "")
    return str(prompt)


def latest_completions(trainer, limit: int = SHOWN_COMPLETIONS) -> list[dict]:
    """The newest sampled completions with each reward and the advantage, as TRL keeps them (`_logs`, sized to one
    generation batch): the page's table of what the policy is writing now."""
    logs = getattr(trainer, "_logs", None)
    if not logs or not logs.get("completion"):
        return []
    prompts, completions = list(logs["prompt"]), list(logs["completion"])
    rewards = {name: list(values) for name, values in logs["rewards"].items()}
    advantages = list(logs["advantages"])
    start = max(0, len(completions) - limit)
    rows = []
    for i in range(start, len(completions)):
        text = completions[i]
        if isinstance(text, list):  # conversational: the assistant's messages
            text = "".join(str(m.get("content") or "") for m in text)
        text = str(text)
        rows.append({"prompt": _plain(prompts[i])[:SHOWN_CHARS], "completion": text[:SHOWN_CHARS],
                     "rewards": {k: round(float(v[i]), 3) for k, v in rewards.items() if i < len(v)},
                     "advantage": round(float(advantages[i]), 3) if i < len(advantages) else None})
    return rows


def completions_callback(trainer, emit):
    """After each log: the latest sampled completions as a `completions` event (the page's table)."""
    from transformers import TrainerCallback

    class Completions(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "reward" in logs:
                rows = latest_completions(trainer)
                if rows:
                    emit("completions", step=state.global_step, rows=rows)

    return Completions()


def heldout_table(job, trainer, tokenizer, recipe, data, seed: int) -> dict | None:
    """Base (adapter off) and tuned answer the held-out prompts; the same rewards score both, with intervals."""
    from studio.evaluate.rewards import answer, prompts_and_solutions, reward_report

    where, rows = heldout_rows(recipe, data, seed, job.log)
    if rows is None:
        return None
    n = min(len(rows), int(recipe.studio.get("heldout_prompts", HELDOUT_PROMPTS)))
    prompts, solutions = prompts_and_solutions(rows.select(range(n)))
    chat = is_instruct(tokenizer)
    limit = int(recipe.train.get("max_completion_length") or 256)
    model = trainer.model
    outs = {}
    for label in ("base", "tuned"):
        job.emit("phase", phase=f"answering {n} held-out prompts ({label})")
        if label == "base":
            with model.disable_adapter():
                outs[label] = answer(model, tokenizer, prompts, limit, chat)
        else:
            outs[label] = answer(model, tokenizer, prompts, limit, chat)
    report = reward_report(outs, prompts, solutions, recipe.header.get("rewards"), [("tuned", "base")],
                           recipe.header.get("reward_code"))
    report["source"] = where
    report["base_is"] = "the base model, adapter off" + (" (not the SFT run it started from)"
                                                          if recipe.header.get("init_adapter") else "")
    return report


def run_grpo(job, resume: bool = False) -> dict:
    from studio.models import folder_size

    recipe, run_dir = job.recipe, job.run_dir
    started = time.time()
    trainer, tokenizer, data = build_grpo_trainer(recipe, run_dir, job.log, [make_callback(job)], job.emit)
    output, start_step = train_job(job, trainer, resume)
    history = trainer.state.log_history
    rewards = [h["reward"] for h in history if h.get("reward") is not None]
    extra = {"train_runtime_s": round(output.metrics.get("train_runtime", 0.0), 3),
             "beta": trainer.args.beta, "num_generations": trainer.args.num_generations,
             "rewards": recipe.header.get("rewards") or "default",
             "first_reward": round(rewards[0], 4) if rewards else None,
             "final_reward": round(rewards[-1], 4) if rewards else None,
             "init_adapter": recipe.header.get("init_adapter"), "parallel": parallel_summary(trainer)}
    stopped = stopped_summary(job, trainer, started, start_step, extra)
    if stopped is not None:
        return stopped

    adapter_dir = run_dir / "adapter"
    job.emit("phase", phase="saving the adapter")
    save_adapter(trainer, tokenizer, adapter_dir, adapters=["default"])
    extra.update(adapter_dir=str(adapter_dir), adapter_bytes=folder_size(adapter_dir))
    report = heldout_table(job, trainer, tokenizer, recipe, data, int(recipe.train.get("seed", 42)))
    if report is not None:
        (run_dir / "heldout_rewards.json").write_text(json.dumps(report, indent=1, ensure_ascii=False),
                                                      encoding="utf-8")
        extra["heldout"] = {"source": report["source"], "prompts": report["prompts"],
                            "mean_reward": report["reward"]["means"], "reward_interval": report["reward"]["intervals"],
                            "words": report["words"]}
        if "accuracy" in report:
            extra["heldout"].update(accuracy=report["accuracy"]["means"],
                                    accuracy_interval=report["accuracy"]["intervals"])
        extra["samples"] = [{"prompt": e["prompt"], "before": marked_reply(e["base"]["completion"]),
                             "after": marked_reply(e["tuned"]["completion"])} for e in report["examples"]]
        extra["samples_before_via"] = "chat template" if is_instruct(tokenizer) else "raw prompt"
        for line in report["words"]:
            job.log(f"held-out ({report['prompts']} prompts): {line}")
    summary = write_summary(job, trainer, DONE, started, start_step, extra)
    job.emit("status", status=DONE)
    return summary
