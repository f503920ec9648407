"""Direct Preference Optimization with LoRA: one linear path handing the work to TRL's DPOTrainer.

Two starts, one path:
- from the base model: a fresh LoRA adapter; the reference is the base (adapter switched off);
- from a finished SFT run (`init_adapter` in the recipe header): its adapter is loaded trainable and
  TRL keeps a frozen `ref` copy of it as the reference, so the base weights are never held twice.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from studio.errors import StudioError
from studio.train.common import (eval_split, memory_probe, quiet_trainer, resolve_fast_defaults, stopped_summary,
                                 train_job, write_summary)
from studio.train.progress import DONE, make_callback, save_adapter

REWARD_KEYS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")
HELDOUT_ROWS = 32  # held-out pairs scored after training (a table, not a benchmark)


def init_adapter_run(recipe) -> Path | None:
    """The SFT run named by `init_adapter` (its name, or runs/<name>), checked: it has an adapter on our base."""
    from studio.access import resolve_run
    from studio.inference import run_adapter, run_base_model
    from studio.models import resolve_model_path

    ref = str(recipe.header.get("init_adapter") or "").strip()
    if not ref:
        return None
    where = recipe.path or recipe.name
    parts = Path(ref).parts
    if len(parts) == 2 and parts[0] == "runs":  # `runs/<run>` as the recipe docs write it, wherever runs/ lives
        ref = parts[1]
    try:
        run = resolve_run(ref)
        run_adapter(run)
        base = run_base_model(run)
    except StudioError as e:
        raise StudioError(f"{where}: init_adapter {ref}: {e}") from None
    mine = recipe.model["model_name_or_path"]
    if resolve_model_path(base) != resolve_model_path(mine):
        raise StudioError(f"{where}: init_adapter {run.name} was trained on {base}, but this recipe's model is {mine}; "
                          f"set model_name_or_path: {base}")
    return run


def load_pairs(recipe, tokenizer=None, seed: int = 42):
    """The recipe's dataset as preference pairs, or one line saying why it can't be.

    Pairs whose chosen equals rejected teach nothing: they are dropped and counted.
    """
    from studio.data import prepare_dataset, read_source
    from studio.data.formats import detect_format, get_format

    ds = recipe.dataset
    raw = read_source(ds["source"], ds.get("config"), ds.get("split"))
    columns = raw.columns
    if "chosen" in columns and "rejected" not in columns:
        raise StudioError(f"{raw.name}: no 'rejected' column (found {', '.join(columns)}); DPO needs prompt / chosen / "
                          "rejected")
    not_pairs = StudioError(
        f"{raw.name} holds {{}}, not preference pairs; DPO needs prompt / chosen / rejected. Make pairs with the "
        f"DPO tab's pair builder or `python -m studio pairs build {ds['source']} --out FILE`")
    if not {"chosen", "rejected"} <= set(columns):
        try:
            what = detect_format(columns, raw.name).label
        except StudioError:
            what = f"the columns {', '.join(columns)}"
        raise StudioError(str(not_pairs).format(what))
    fmt = get_format(ds.get("format") or raw.hint, columns, raw.name)
    if fmt.kind != "preference":
        raise StudioError(str(not_pairs).format(fmt.label))
    for i, row in enumerate(raw.records(["prompt"]) if "prompt" in columns else ()):
        if "prompt" in row and (row["prompt"] is None or not (str(row["prompt"]).strip() if not isinstance(
                row["prompt"], list) else row["prompt"])):
            raise StudioError(f"{raw.name} {raw.label(i)}: empty prompt")
    data = prepare_dataset(ds["source"], ds.get("format"), ds.get("template"), config=ds.get("config"),
                           split=ds.get("split"), splits=ds.get("splits", "80/10/10"), seed=seed,
                           tokenizer=tokenizer if ds.get("max_length") else None, max_length=ds.get("max_length"),
                           max_rows=ds.get("max_rows"))
    identical = 0
    for name, split in list(data.splits.items()):
        kept = split.filter(lambda r: r["chosen"] != r["rejected"])
        identical += len(split) - len(kept)
        data.splits[name] = kept
    if identical:
        data.dropped["chosen equals rejected"] = identical
        data.rows -= identical
    if not len(data.splits["train"]):
        raise StudioError(f"{raw.name}: no usable pairs: in all {identical} training pairs chosen equals rejected")
    return data


def build_dpo_trainer(recipe, run_dir: Path, log=print, callbacks=()):
    """seed → tokenizer → pairs → model (fresh adapter or the SFT run's) → speed settings → DPOTrainer."""
    import torch
    from transformers import set_seed
    from trl import DPOTrainer, get_peft_config

    from studio.models import load_model, load_tokenizer

    seed = int(recipe.train.get("seed", 42))
    set_seed(seed)
    model_args = recipe.model_config()
    init_run = init_adapter_run(recipe)
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    data = load_pairs(recipe, tokenizer, seed)
    log(f"data: {data.source} as {data.format.name}, {data.rows} pairs, {data.dropped_total} dropped"
        + (f" ({', '.join(f'{v} {k}' for k, v in data.dropped.items())})" if data.dropped else "")
        + f", splits {', '.join(f'{k} {len(v)}' for k, v in data.splits.items())}")
    eval_ds = eval_split(recipe, data, log)

    log(f"loading {model_args.model_name_or_path}")
    model = load_model(model_args, trust_remote_code=bool(recipe.train.get("trust_remote_code")))
    peft_config = get_peft_config(model_args)
    if init_run is not None:
        from peft import PeftModel

        from studio.inference import run_adapter

        model = PeftModel.from_pretrained(model, str(run_adapter(init_run)), is_trainable=True)
        peft_config = None  # the SFT run's LoRA settings come with its adapter
        log(f"starting from {init_run.name}'s adapter; the reference is a frozen copy of it")
    else:
        log("starting from the base model: a fresh adapter; the reference is the base (adapter off)")
    if "train_sampling_strategy" not in recipe.train:  # the length sampler needs an input_ids column; pairs have none
        recipe.train["train_sampling_strategy"] = "random"
    on_gpu = torch.cuda.is_available()
    fits = memory_probe(model, tokenizer, data, recipe.train.get("max_length")) if on_gpu else None
    for note in resolve_fast_defaults(recipe, on_gpu=on_gpu, fits=fits):
        log(note)
    args, notes = recipe.training_config(run_dir / "checkpoints")
    for note in notes:
        log(note)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data.splits["train"], eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config, callbacks=list(callbacks))
    quiet_trainer(trainer)
    return trainer, tokenizer, data


def reward_summary(log_history: list[dict]) -> dict:
    """Final train and eval rewards/* as TRL logged them, and the first train margin to compare with."""
    out = {}
    for prefix, label in (("", "train_"), ("eval_", "eval_")):
        for key in REWARD_KEYS:
            values = [h[prefix + key] for h in log_history if prefix + key in h]
            if values:
                out[label + key] = round(float(values[-1]), 4)
                if key == "rewards/margins":
                    out[f"first_{label}{key}"] = round(float(values[0]), 4)
    return out


def run_dpo(job, resume: bool = False) -> dict:
    from studio.models import folder_size

    recipe, run_dir = job.recipe, job.run_dir
    started = time.time()
    trainer, tokenizer, data = build_dpo_trainer(recipe, run_dir, job.log, [make_callback(job)])
    output, start_step = train_job(job, trainer, resume)
    extra = {"train_runtime_s": round(output.metrics.get("train_runtime", 0.0), 3),
             "beta": trainer.args.beta, "loss_type": list(trainer.args.loss_type),
             "init_adapter": recipe.header.get("init_adapter"), **reward_summary(trainer.state.log_history)}
    stopped = stopped_summary(job, trainer, started, start_step, extra)
    if stopped is not None:
        return stopped

    adapter_dir = run_dir / "adapter"
    save_adapter(trainer, tokenizer, adapter_dir, adapters=["default"])  # not TRL's frozen `ref` copy
    extra.update(adapter_dir=str(adapter_dir), adapter_bytes=folder_size(adapter_dir))
    heldout_name = "test" if "test" in data.splits else "validation" if "validation" in data.splits else None
    if heldout_name:
        rows, prompts = [], set()
        for row in data.splits[heldout_name]:  # one pair per prompt: a table of distinct questions
            key = json.dumps(row["prompt"], sort_keys=True)
            if key not in prompts:
                prompts.add(key)
                rows.append(row)
            if len(rows) == HELDOUT_ROWS:
                break
        reference = "ref" if "ref" in trainer.model.peft_config else None
        table = margin_table(trainer.model, tokenizer, rows, reference, beta=trainer.args.beta)
        (run_dir / "heldout_margins.json").write_text(json.dumps(table, indent=1, ensure_ascii=False), encoding="utf-8")
        extra["heldout"] = {"split": heldout_name, "rows": len(table),
                            "reward_accuracy": round(sum(r["reward_margin"] > 0 for r in table) / len(table), 4),
                            "policy_prefers_chosen": round(sum(r["prefers_chosen"] for r in table) / len(table), 4),
                            "reference_prefers_chosen": round(
                                sum(r["reference_margin"] > 0 for r in table) / len(table), 4)}
        h = extra["heldout"]
        margin = sum(r["reward_margin"] for r in table) / len(table)
        h["mean_reward_margin"] = round(margin, 4)
        job.log(f"held-out {heldout_name} pairs ({len(table)} prompts): mean reward margin {margin:+.3f}, "
                f"reward accuracy {h['reward_accuracy']:.0%} (DPO moved towards the chosen reply on that share)")
    summary = write_summary(job, trainer, DONE, started, start_step, extra)
    job.emit("status", status=DONE)
    return summary


# ---- log-probability margins: the dashboard's held-out table, and the Evaluate tab's -----------------

def _as_text(tokenizer, prompt, completion) -> tuple[str, str]:
    """A pair side as (prompt text, completion text); conversational rows through the chat template."""
    if not isinstance(prompt, list):
        return str(prompt), completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
    from studio.inference import chat_prompt

    head = chat_prompt(tokenizer, prompt)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    return head, full[len(head):] if full.startswith(head) else "".join(m["content"] for m in completion)


def completion_logp(model, tokenizer, prompt, completion) -> float:
    """log p(completion | prompt), summed over the completion's tokens."""
    import torch

    head, tail = _as_text(tokenizer, prompt, completion)
    p_ids = tokenizer(head)["input_ids"]
    c_ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    if not c_ids:
        return 0.0
    ids = torch.tensor([p_ids + c_ids], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return float(logps[len(p_ids) - 1:].sum())


def margin_table(model, tokenizer, rows: list[dict], reference_adapter: str | None = None,
                 beta: float = 0.1) -> list[dict]:
    """Per pair: the policy's and the reference's log p(chosen) − log p(rejected), and DPO's reward margin
    β·(policy − reference) — positive when training moved the policy towards `chosen`.

    `model` is a PeftModel; the reference is its `reference_adapter` (an SFT start) or the base (adapter off).
    Summed log-probs favour short replies, so `prefers_chosen` (policy margin > 0) can stay false on pairs
    whose chosen reply is much longer even when the reward margin is large.
    """
    def margin(row):
        return (completion_logp(model, tokenizer, row["prompt"], row["chosen"])
                - completion_logp(model, tokenizer, row["prompt"], row["rejected"]))

    was_training = model.training
    model.eval()
    active = model.active_adapter
    policy = [margin(r) for r in rows]
    if reference_adapter:
        model.set_adapter(reference_adapter)
        ctx = contextlib.nullcontext()
    else:
        ctx = model.disable_adapter()
    try:
        with ctx:
            reference = [margin(r) for r in rows]
    finally:
        if reference_adapter:
            model.set_adapter(active)
        model.train(was_training)

    def show(v):
        return v if isinstance(v, str) else "\n".join(f"{m['role']}: {m['content']}" for m in v)

    return [{"prompt": show(r["prompt"]), "chosen": show(r["chosen"]), "rejected": show(r["rejected"]),
             "policy_margin": round(p, 4), "reference_margin": round(q, 4), "reward_margin": round(beta * (p - q), 4),
             "prefers_chosen": p > 0}
            for r, p, q in zip(rows, policy, reference)]


def preference_margins(run: str, rows: list[dict]) -> list[dict]:
    """A finished DPO run's margin table on `rows` (prompt/chosen/rejected), loaded from disk with plain PEFT.

    The reference is what the run trained against: its `init_adapter` run's adapter, or the base.
    """
    import yaml

    from studio.access import resolve_run
    from studio.inference import load_for_inference, run_adapter

    loaded = load_for_inference(str(resolve_run(run)))
    recipe = yaml.safe_load((loaded.run / "recipe.yaml").read_text("utf-8")) or {}
    reference, beta = None, float(recipe.get("beta", 0.1))
    if recipe.get("init_adapter"):
        from studio.recipes import recipe_from_dict

        init_run = init_adapter_run(recipe_from_dict(recipe, str(loaded.run / "recipe.yaml")))
        loaded.model.load_adapter(str(run_adapter(init_run)), adapter_name="ref")
        reference = "ref"
    return margin_table(loaded.model, loaded.tokenizer, rows, reference, beta=beta)
