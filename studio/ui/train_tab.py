"""Train tab: recipe → form, parameter report, Start/Stop/Resume, live dashboard, runs history."""

from __future__ import annotations

import enum
import math
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from studio.ui.common import (browser, error_html, handover, job_log, keep_handover, ok_html, page_browser_id,
                              progress_html, safely, shown_source, text_cell)


def memory_line(recipe) -> str:
    """The parameter check's memory line: the estimate against what this machine has (studio.memory)."""
    from studio.errors import StudioError
    from studio.memory import check_fits, estimate_for_recipe, recipe_settings

    try:
        est = estimate_for_recipe(recipe)
    except Exception:  # noqa: BLE001 - an architecture the estimate can't read: the parameters still show
        return ""
    try:
        return "**Memory:** " + check_fits(est, recipe_settings(recipe)).removeprefix("memory: ")
    except StudioError as e:
        return f"**Memory:** ⚠️ {e}"

SCRATCH = "(start from scratch)"
# (recipe key, widget factory). Keys are the recipe's own (TRL) field names: one name per setting, everywhere.
BASIC = [
    ("lora_r", lambda: gr.Number(label="LoRA r", precision=0, minimum=1)),
    ("lora_alpha", lambda: gr.Number(label="LoRA alpha", precision=0, minimum=1)),
    ("lora_dropout", lambda: gr.Number(label="LoRA dropout", minimum=0, maximum=1)),
    ("lora_target_modules", lambda: gr.Textbox(label="Target modules", placeholder="all-linear, or q_proj, v_proj")),
    ("load_in_4bit", lambda: gr.Checkbox(label="4-bit NF4 (QLoRA)")),
    ("learning_rate", lambda: gr.Number(label="Learning rate")),
    ("max_steps", lambda: gr.Number(label="Max steps (-1: use epochs)", precision=0)),
    ("num_train_epochs", lambda: gr.Number(label="Epochs")),
    ("per_device_train_batch_size", lambda: gr.Number(label="Micro-batch", precision=0, minimum=1)),
    ("gradient_accumulation_steps", lambda: gr.Number(label="Grad accumulation", precision=0, minimum=1)),
    ("max_length", lambda: gr.Number(label="Max length (tokens)", precision=0, minimum=8)),
]
ADVANCED = [
    ("warmup_steps", lambda: gr.Number(label="Warmup steps (or ratio < 1)")),
    ("lr_scheduler_type", lambda: gr.Dropdown(["linear", "cosine", "constant", "constant_with_warmup"],
                                              label="LR schedule", allow_custom_value=True)),
    ("optim", lambda: gr.Textbox(label="Optimizer")),
    ("logging_steps", lambda: gr.Number(label="Log every N steps")),
    ("eval_strategy", lambda: gr.Dropdown(["no", "steps", "epoch"], label="Evaluate")),
    ("eval_steps", lambda: gr.Number(label="Eval every N steps")),
    ("save_steps", lambda: gr.Number(label="Checkpoint every N steps")),
    ("seed", lambda: gr.Number(label="Seed", precision=0)),
    ("use_dora", lambda: gr.Checkbox(label="DoRA")),
    ("use_rslora", lambda: gr.Checkbox(label="rsLoRA")),
    ("activation_checkpointing", lambda: gr.Checkbox(label="Gradient checkpointing")),
    ("studio.auto_batch", lambda: gr.Checkbox(label="Auto micro-batch (keeps the effective batch)")),
    ("report_to", lambda: _report_to_widget()),
]
TRAIN_KINDS = ("sft", "lapdog", "grpo")  # what the Train tab starts; DPO runs belong to the DPO tab
DOWNLOAD_JS = "() => { const a = document.querySelector('#train-recipe-file a[download]'); if (a) a.click(); }"
# LAPDOG's own settings (recipe `retrieval:`, docs/persona-chat.md): shown when a lapdog recipe is picked
LAPDOG = [
    ("retrieval.corpus", lambda: gr.Textbox(label="Story corpus (a file, upload: NAME, a sample; empty: bundled)")),
    ("retrieval.k", lambda: gr.Number(label="Stories per reply (k)", precision=0, minimum=1)),
    ("retrieval.query", lambda: gr.Dropdown(["persona", "persona+turn"], label="Retriever query")),
    ("retrieval.tau_score", lambda: gr.Number(label="τ score (retriever temperature)")),
    ("retrieval.tau_gold", lambda: gr.Number(label="τ gold (target temperature)")),
    ("retrieval.stage1_steps", lambda: gr.Number(label="Stage 1 steps (closed-book SFT)", precision=0, minimum=1)),
    ("retrieval.stage2_steps", lambda: gr.Number(label="Stage 2 steps (joint retriever)", precision=0, minimum=1)),
    ("retrieval.retriever_learning_rate", lambda: gr.Number(label="Retriever learning rate")),
    ("retrieval.refresh_steps", lambda: gr.Number(label="Refresh stage-2 stories every N steps (0: never)",
                                                  precision=0, minimum=0)),
]
# GRPO's own settings (TRL's GRPOConfig and the held-out table): shown when a grpo recipe is picked. The initial
# values are GRPOConfig's defaults (an API client that leaves them out sends these; another method ignores them).
GRPO = [
    ("num_generations", lambda: gr.Number(8, label="Completions per prompt (num_generations)", precision=0,
                                          minimum=2)),
    ("max_completion_length", lambda: gr.Number(256, label="Max completion length (tokens)", precision=0,
                                                minimum=1)),
    ("temperature", lambda: gr.Number(1.0, label="Sampling temperature")),
    ("beta", lambda: gr.Number(0.0, label="β: KL to the reference (0: none)", minimum=0)),
    ("studio.heldout_prompts", lambda: gr.Number(200, label="Held-out prompts scored after training", precision=0,
                                                 minimum=1)),
]
GRPO_KEYS = {key for key, _ in GRPO} | {"reward_code"}
INT_KEYS = {"num_generations", "max_completion_length", "studio.heldout_prompts",
            "lora_r", "lora_alpha", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
            "max_length", "seed", "logging_steps", "eval_steps", "save_steps", "retrieval.k",
            "retrieval.stage1_steps", "retrieval.stage2_steps", "retrieval.refresh_steps"}


EVAL_SOURCE_INFO = ("dataset.eval_source, evaluated instead of a random split: a sample, your file as the Data tab "
                    "names it, a Hub id or its split (validation); locally also a path")
RECIPE_INFO = ("tiny-… recipes: the embedded toy model, under a minute. smollm2-… recipes: a real model, "
               "SmolLM2-135M-Instruct, minutes on a CPU. DPO recipes: start them on the DPO tab.")


def ended_line(job) -> str:
    """The message once this page's run has ended: how, and the next step (a failure shows in the bar)."""
    s = job.snapshot()
    if s["status"] == "done":
        return ok_html(f"{job.id} finished ({s['step']} steps). Next: compare it with its base on the Evaluate "
                       "tab, chat with it on Persona Chat, or export it.")
    if s["status"] == "cancelled":
        return ok_html(f"{job.id} stopped at step {s['step']} of {s['total'] or '?'}; its last checkpoint is "
                       "kept: press Resume to go on from it.")
    return ""


def handed_source(flat: dict, given: dict | None, saving: bool = False) -> dict:
    """The Dataset field names an upload the Data tab handed over as "upload: <name>"; the job reads the file
    the server kept for this page (never a path the page sent). A saved recipe names the file by its name."""
    if given and flat.get("dataset.source") == shown_source(given["source"]):
        flat["dataset.source"] = Path(given["source"]).name if saving else str(given["source"])
    return flat


def leave_queue_line(client_id, watching):
    """The Leave-the-queue button of the Train and DPO tabs: (message, queue line, button, watch state)."""
    import gradio as gr

    from studio.jobs import leave_queue

    client_id = browser(client_id) or client_id
    _, err = safely(leave_queue, client_id, (watching or {}).get("ticket"))
    if err:
        return error_html(err), "", gr.update(visible=False), watching
    return (ok_html("You left the queue; your job will not start."), "", gr.update(visible=False),
            {**(watching or {}), "ticket": None})


def _report_to_widget():
    """TRL's report_to: the trackers installed here (on a shared app, the ones that stay on this machine)."""
    from studio.access import shared_mode
    from studio.recipes import tracker_choices

    shared = shared_mode()
    hint = ("Trackers that write to this server's disk; its owner adds them: pip install trackio tensorboard, then "
            "restarts the app." if shared else
            "To add a tracker: pip install trackio tensorboard (or wandb, mlflow), then restart the app.")
    return gr.Dropdown(tracker_choices(shared), multiselect=True, label="Report to (trackers)", info=hint)


def _recipe_names() -> list[str]:
    from studio.recipes import RECIPES_DIR

    return [SCRATCH] + sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_form(name: str) -> dict:
    """The flat form values of a recipe, or of a from-scratch default."""
    from studio.models import default_model
    from studio.recipes import RECIPES_DIR, load_recipe, recipe_to_flat

    from studio.access import resolve

    recipe = load_recipe(RECIPES_DIR / "tiny-quotes.yaml" if name in (SCRATCH, None) else resolve("recipe", name))
    flat = recipe_to_flat(recipe)
    # Show TRL's defaults for what the recipe leaves unset, so every field says what will happen.
    import tempfile as _tempfile

    with _tempfile.TemporaryDirectory() as tmp:
        args, _ = recipe.training_config(tmp, validate_only=True)
    model_args = recipe.model_config()
    flat.setdefault("activation_checkpointing", False)  # the studio turns it on only when memory needs it
    for key, _make in BASIC + ADVANCED + (GRPO if recipe.method == "grpo" else []):
        if key not in flat and "." not in key:
            value = getattr(args, key, getattr(model_args, key, None))
            flat[key] = value.value if isinstance(value, enum.Enum) else value
    if recipe.method == "grpo":
        from studio.train.grpo import HELDOUT_PROMPTS

        flat.setdefault("studio.heldout_prompts", HELDOUT_PROMPTS)
    if name in (SCRATCH, None):
        flat.update({"name": "custom", "description": "Made in the Train tab", "source_notebook": "",
                     "model_name_or_path": default_model()})
    return flat


def form_to_flat(keys: list[str], values: list, base: dict, grpo_section: bool = False) -> dict:
    """The form's values over the recipe's other keys. `grpo_section`: the form has the Train tab's GRPO section,
    whose hidden fields mean nothing to another method (the DPO tab's own `beta` is its own field, always read)."""
    flat = dict(base or {})
    rows: dict = {}  # GRPO's reward menu: rewards.N.type / .weight / .settings → the recipe's `rewards:` list
    for key, value in zip(keys, values):
        if grpo_section and key in GRPO_KEYS and flat.get("method") != "grpo":
            continue  # the hidden GRPO section's fields mean nothing to another method
        if key.startswith("rewards."):
            _, n, part = key.split(".")
            rows.setdefault(int(n), {})[part] = value
            continue
        if key == "lora_target_modules" and isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            value = parts[0] if parts == ["all-linear"] else parts or None
        elif key == "eval_prompts" and isinstance(value, str):
            value = [line for line in value.splitlines() if line.strip()]
        elif key == "report_to" and isinstance(value, list):
            names = [v for v in value if v != "none"]  # none beside trackers goes on, and is refused in one line
            value = "none" if not names else value[0] if len(value) == 1 else list(value)
        elif key in INT_KEYS and isinstance(value, float):
            if not math.isfinite(value):  # NaN or Infinity, sent straight through the API
                from studio.errors import StudioError

                raise StudioError(f"form: '{key}' must be a finite number, got {value!r}")
            value = int(value)
        if key.startswith("retrieval."):  # LAPDOG's fields go into the recipe's `retrieval:` block (a copy)
            if value is None or value == "":
                continue
            flat["retrieval"] = {**(flat.get("retrieval") or {}), key.partition(".")[2]: value}
            continue
        flat[key] = value
    if rows:
        from studio.ui.grpo import REWARD_ROWS, rows_to_rewards

        kept = flat.get("rewards")
        rewards = rows_to_rewards(rows, kept[REWARD_ROWS:] if isinstance(kept, list) else None)
        if not rewards and flat.get("method") == "grpo":
            from studio.errors import StudioError

            raise StudioError("form: a GRPO run needs at least one reward: pick its type in Rewards (GRPO)")
        if rewards:
            flat["rewards"] = rewards
        else:
            flat.pop("rewards", None)
    return flat


def form_value(flat: dict, key: str):
    """A form field's value in a recipe's flat keys (`retrieval.k` lives in the `retrieval` block)."""
    if key.startswith("retrieval."):
        from studio.persona import DEFAULTS  # a LAPDOG setting the recipe leaves out shows the default it trains with

        block, name = flat.get("retrieval"), key.partition(".")[2]
        value = block.get(name) if isinstance(block, dict) else None
        return DEFAULTS.get(name) if value is None and flat.get("method") == "lapdog" else value
    if key.startswith("rewards."):
        from studio.ui.grpo import row_value

        return row_value(flat.get("rewards") if flat.get("method") == "grpo" else None, key)
    return flat.get(key)


def _flat_to_widget(key: str, value):
    if key == "lora_target_modules" and isinstance(value, list):
        return ", ".join(value)
    if key == "eval_prompts":
        return "\n".join(value or [])
    if key == "report_to":
        from studio.recipes import report_targets

        return report_targets(value) or ["none"]
    return value


def samples_markdown(summary: dict | None) -> str:
    if not summary or not summary.get("samples"):
        return ""
    via = summary.get("samples_before_via") == "chat template"
    before = "before (base, asked through its chat template)" if via else "before (base)"
    rows = [f"| prompt | {before} | after (tuned) |", "|---|---|---|"]
    cell = text_cell  # shown as text: no HTML, and no Markdown image (a tracking pixel) or link
    for s in summary["samples"]:
        rows.append(f"| {cell(s['prompt'])} | {cell(s['before'])} | {cell(s['after'])} |")
    note = ("\n\n*The base is an instruct model: asked with the raw prompt it ends its turn at once (an empty reply), "
            "so it is asked as a user message through its chat template, as Evaluate asks it; the tuned column "
            "sees the prompt as it trained.*") if via else ""
    return "**Before / after on the sample prompts**\n\n" + "\n".join(rows) + note


def finished_markdown(job) -> str:
    """What a finished run shows under the live view: the before/after samples and, for GRPO, the held-out reward
    table (base vs tuned, the run's own reward functions, intervals over prompts)."""
    from studio.ui.grpo import heldout_markdown

    held = heldout_markdown(job.run_dir, job.summary)
    return "\n\n".join(part for part in (samples_markdown(job.summary), held) if part)


def training_chart(history: list[dict], title: str):
    """A run's chart: a GRPO run's rewards (what it optimises), any other run's loss."""
    from studio.charts import is_reward_history, loss_chart, reward_chart

    if is_reward_history(history):
        return gr.update(value=reward_chart(history, title), label="Rewards (GRPO)")
    return gr.update(value=loss_chart(history, title), label="Loss, eval loss and learning rate")


def _rough(seconds) -> str:
    if seconds is None:
        return "an unknown time"
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    return f"about {minutes} min" if minutes < 90 else f"about {minutes // 60} h {minutes % 60} min"


def queue_html(ticket) -> str:
    """A waiting job as its owner sees it: its place in line and roughly when it starts (no one else's run)."""
    from studio.jobs import queue_position, wait_estimate

    position = queue_position(ticket)
    if position is None:
        return ""
    ahead = "the running job" if position == 1 else f"the running job and {position - 1} waiting ahead of yours"
    return (f'<div class="studio-queue" data-position="{position}"><b>Waiting in line: position {position}.</b> '
            f"It starts in {_rough(wait_estimate(ticket))} ({ahead}); it starts by itself when the slot frees, "
            "even if you close this page.</div>")


def busy_html() -> str:
    """What a visitor learns of a job that is not theirs: only that the slot is busy, and roughly how long."""
    from studio.jobs import slot_time_left

    return (f'<div class="studio-queue" data-busy="1">The training slot is busy with another visitor\'s job '
            f"({_rough(slot_time_left())} left). Start puts your job in the waiting list.</div>")


def arm_timer(watching):
    """After a start: the page polls again while its job runs or waits, and offers to leave the line."""
    watching = watching or {}
    if watching.get("ticket") or watching.get("id"):
        return gr.Timer(active=True), gr.update(visible=bool(watching.get("ticket")))
    return gr.update(), gr.update()


def written(before: dict | None, after: dict):
    """A poll's answer for the page's `watch` State: unchanged is left alone (gr.update()), so a poll that crossed a
    start never writes back the record the start replaced (seen in CI: the page lost the job it started, and the
    failed start's status and ending line with it)."""
    return gr.update() if after == (before or {}) else after


def watch_slot(kinds, client_id, watching: dict):
    """What this page may show of the one training slot: (its job or None, a queue/busy line or None, whether
    to keep polling, the updated `watching`). Only the job's own visitor sees the job (studio.access.may_watch);
    locally that is every browser."""
    from studio.access import may_watch
    from studio.jobs import get_ticket, latest_job, slot_busy, waiting_ticket

    ticket = get_ticket(watching.get("ticket")) or waiting_ticket(client_id, kinds)
    note = None
    if ticket is not None:
        if ticket.job is not None:
            watching = {**watching, "id": ticket.job.id, "ticket": None}
        elif ticket.error is not None:
            note = error_html(f"your waiting job could not start: {ticket.error}")
            watching = {**watching, "ticket": None}
        elif ticket.waiting:
            return None, queue_html(ticket), True, {**watching, "ticket": ticket.id}
        else:
            watching = {**watching, "ticket": None}
    job = latest_job(kinds, watching.get("id"), visible=lambda j: may_watch(j.run_dir), owner=client_id or None)
    if job is not None:
        return job, note, job.active, watching
    if note is None and slot_busy():
        note = busy_html()
    return None, note, False, watching


_picks: "OrderedDict[str, None]" = OrderedDict()  # sessions (page loads) whose visitor picked a recipe
_picks_lock = threading.Lock()


def note_pick(request) -> None:
    """A recipe was picked in this page load (a Gradio session names one load): its load-time fill, if still to
    come, must not overwrite the pick (issue 34: a pick in the first seconds was undone by the page's fill)."""
    session = getattr(request, "session_hash", None)
    if not session:
        return
    with _picks_lock:
        _picks[session] = None
        while len(_picks) > 2000:  # a load's fill comes within seconds of its first pick: old marks are spent
            _picks.popitem(last=False)


def picked(request) -> bool:
    """Was a recipe picked in this page load already (see `note_pick`)?"""
    session = getattr(request, "session_hash", None)
    with _picks_lock:
        return bool(session) and session in _picks


def create_train_tab(client: gr.BrowserState) -> dict:
    """`client` is this browser's id (kept in localStorage): who may stop the job it started."""
    from studio.models import PRESETS

    with gr.Tab("Train", id="train"):
        base_flat = gr.State({})  # the recipe's keys the form does not show (header, other TRL fields)
        with gr.Row():
            recipe = gr.Dropdown(_recipe_names(), value="tiny-quotes", label="Recipe", scale=2, info=RECIPE_INFO,
                                 elem_id="train-recipe")
            model = gr.Dropdown(list(PRESETS), label="Base model (preset, Hub id or local folder)",
                                allow_custom_value=True, scale=3)
        with gr.Row():
            ds_source = gr.Textbox(label="Dataset (sample name, file path or Hub id)", scale=3)
            ds_format = gr.Dropdown(["auto"], label="Format", allow_custom_value=True, scale=2)
            ds_template = gr.Textbox(label="Template override", scale=2)
            ds_eval = gr.Textbox("", label="Held-out data (optional)", scale=3, elem_id="train-eval-source",
                                 placeholder="empty: a held-out split of the dataset", info=EVAL_SOURCE_INFO)
        widgets: dict = {"model_name_or_path": model, "dataset.source": ds_source, "dataset.format": ds_format,
                         "dataset.template": ds_template}
        def place_rows(*rows):
            for specs in rows:
                with gr.Row():
                    for key, make in specs:
                        widgets[key] = make()

        place_rows(BASIC[:5], BASIC[5:])
        with gr.Accordion("Advanced", open=False):
            place_rows(ADVANCED[:6], ADVANCED[6:])
            widgets["eval_prompts"] = gr.Textbox(label="Sample prompts (one per line), generated before and after",
                                                 lines=2)
        with gr.Accordion("LAPDOG: stories and the retriever", open=True, visible=False,
                          elem_id="train-lapdog") as lapdog_box:
            gr.Markdown("Stage 1 trains the generator closed-book; stage 2 trains it with the top-k stories while "
                        "the retriever learns which stories make the gold reply likelier (docs/persona-chat.md).")
            place_rows(LAPDOG[:5], LAPDOG[5:])
            signal = gr.Dropdown(["metric", "likelihood"], label="Retriever signal",
                                 info="metric: each story's greedy reply scored by F1 + ROUGE-L + BLEU (the paper's); "
                                      "likelihood: the gold reply's likelihood with each story (sharper, no generation)")
        with gr.Accordion("Rewards (GRPO)", open=True, visible=False, elem_id="train-grpo") as grpo_box:
            from studio.access import shared_mode
            from studio.ui.grpo import NONE, REWARD_ROWS, legend_markdown, reward_types

            local = not shared_mode()  # a file of reward functions runs Python here: the owner's own app only
            with gr.Accordion("What each reward scores, and its settings", open=False):
                gr.Markdown(legend_markdown(local))
            for n in range(1, REWARD_ROWS + 1):
                with gr.Row(elem_classes="train-reward-row"):
                    widgets[f"rewards.{n}.type"] = gr.Dropdown(reward_types(local), value=NONE, label=f"Reward {n}",
                                                               scale=2, min_width=120)
                    widgets[f"rewards.{n}.weight"] = gr.Number(1.0, label="Weight", scale=1, min_width=80)
                    widgets[f"rewards.{n}.settings"] = gr.Textbox("", label="Settings (name=value; …)", scale=4,
                                                                  placeholder="as its type takes: see What each reward scores")
            place_rows(GRPO)
            if local:
                widgets["reward_code"] = gr.Textbox(
                    "", label="Reward code file (a .py of functions on this machine, for rewards of type code; "
                          "local app only)", placeholder="e.g. /home/me/my_rewards.py")
        # last in the API's order (shown in the dataset row): an API client that leaves it out sends "" (none)
        widgets["dataset.eval_source"] = ds_eval
        widgets["retrieval.signal"] = signal  # after it, for the same reason (an API client's None: the default)
        keys, comps = list(widgets), list(widgets.values())
        with gr.Row():
            check = gr.Button("Check parameters")
            start = gr.Button("Start", variant="primary")
            stop = gr.Button("Stop", variant="stop")
            resume_last = gr.Button("Resume")
            leave = gr.Button("Leave the queue", visible=False, elem_id="train-leave")
            save = gr.Button("Save as recipe", elem_id="train-save")
        recipe_file = gr.File(label="Saved recipe (the form at the click)", visible=False, interactive=False,
                              elem_id="train-recipe-file")
        params = gr.Markdown(elem_id="param-report")
        message = gr.HTML(elem_id="train-message")
        queue_line = gr.HTML(elem_id="train-queue")
        progress = gr.HTML(elem_id="train-progress")
        chart = gr.Plot(label="Loss, eval loss and learning rate", elem_id="train-chart")
        completions = gr.Markdown(elem_id="train-completions")  # GRPO: the latest sampled completions
        samples = gr.Markdown(elem_id="train-samples")
        logs = gr.Textbox(label="Log", lines=8, max_lines=12, autoscroll=True, elem_id="train-log")
        with gr.Accordion("Runs history", open=False) as history:
            with gr.Row():
                run_pick = gr.Dropdown([], label="Run", scale=3, elem_id="train-run-pick")
                run_other = gr.Dropdown([], label="Compare with", scale=3)
                refresh = gr.Button("Refresh", scale=1)
            with gr.Row():
                open_run = gr.Button("Open")
                resume = gr.Button("Resume this run")
            run_summary = gr.JSON(label="Summary")
            run_chart = gr.Plot(label="Run chart")
        seen = gr.State(-1)  # metric rows already drawn, so the chart is rebuilt only when it changed
        # the job this page started, and whether its "Started" banner is still up (cleared when the job ends)
        watch = gr.State({})
        polled = gr.State(True)  # whether the timer was polling at this page's last poll (only the poll writes it)

        def fill(name):
            flat, err = safely(load_form, name)
            if err:
                return [gr.update()] * len(comps) + [{}, error_html(err)]
            from studio.data import FORMATS

            out = []
            for key in keys:
                value = _flat_to_widget(key, form_value(flat, key))
                if key == "dataset.format":
                    out.append(gr.update(choices=["auto", *FORMATS], value=value or "auto"))
                else:
                    out.append(value)
            return out + [flat, ""]

        # the dataset the Data tab handed over, kept when another recipe is picked (and, per browser, on the server:
        # a reload gets it back, see on_load)
        handed = gr.State(None)

        def hand_over(out, given):
            """The handed dataset written over a fill's form values (`out`, in `keys` order)."""
            fmt = keys.index("dataset.format")
            out[keys.index("dataset.source")] = shown_source(given["source"])
            out[keys.index("dataset.template")] = given["template"] or ""
            out[keys.index("dataset.eval_source")] = ""  # the recipe's held-out data belongs to the recipe's data
            out[fmt] = {**out[fmt], "value": given["format"] or "auto"} if isinstance(out[fmt], dict) else (
                given["format"] or "auto")
            if given.get("prompts") and "eval_prompts" in keys:  # the before/after samples ask this data's prompts
                out[keys.index("eval_prompts")] = "\n".join(given["prompts"])
            return out

        def pick_recipe(name, given, request: gr.Request = None):
            note_pick(request)  # a fill on page load that finishes after this pick leaves the form alone
            out = fill(name)
            flat, notes = out[-2], []
            if isinstance(flat, dict) and flat.get("method") == "dpo":
                notes.append(f"{name} is a DPO recipe: it trains on preference pairs. The DPO tab labels "
                             "pairs and shows its rewards; start it there.")
            if given and isinstance(flat, dict) and flat.get("method") != "dpo":
                hand_over(out, given)
                notes.append(f"Kept your dataset from the Data tab ({shown_source(given['source'])}) and its sample "
                             f"prompts; "
                             f"the recipe's own is {flat.get('dataset.source')}: type it in the "
                             "Dataset field to use that instead.")
            if notes and not out[-1]:
                out[-1] = ok_html(" ".join(notes))
            return out

        def method_sections(flat):
            method = flat.get("method") if isinstance(flat, dict) else None
            return gr.update(visible=method == "lapdog"), gr.update(visible=method == "grpo")

        # the section's visibility follows the recipe just filled (a layout block among the fill's outputs made the
        # page drop the fields' new values)
        recipe.change(pick_recipe, [recipe, handed], comps + [base_flat, message], api_name="fill").then(
            method_sections, base_flat, [lapdog_box, grpo_box], api_name=False, show_progress="hidden")
        def typed_over(client_id):  # the recipe's (or the typed) data wins again, after a reload too
            keep_handover(client_id, None)
            return None

        ds_source.input(typed_over, client, handed, api_name=False)

        def check_params(base, *values):
            from studio.models import estimate_parameters, format_parameter_report
            from studio.recipes import recipe_from_flat

            def run():
                recipe_obj = recipe_from_flat(form_to_flat(keys, values, base, grpo_section=True))
                report = estimate_parameters(recipe_obj.model_config())
                return report, memory_line(recipe_obj)

            result, err = safely(run)
            if err:
                return error_html(err)
            report, memory = result
            return f"**Parameters:** `{format_parameter_report(report)}`  \n{memory}"

        check.click(check_params, [base_flat, *comps], params, api_name="check_parameters")

        timer = gr.Timer(1.0)  # polls while this page's job runs or waits; a first tick re-attaches after a load

        def started(job, err, verb, what=""):
            """A start's answer: (message, seen, watch) for a started or a waiting job."""
            if err:
                return error_html(err), -1, {}
            if not hasattr(job, "run_dir"):  # a Ticket: the slot is busy, the job waits in line
                # seen -2: the next poll empties the chart (it showed this page's previous run while waiting)
                return (queue_html(job) or ok_html("Your job is waiting in line."), -2,
                        {"ticket": job.id, "banner": False, "fresh": True})
            return (ok_html(f"{verb} {job.id}{what}. Closing the browser does not stop it; reload to re-attach."), -1,
                    {"id": job.id, "banner": True})

        def start_run(profile: gr.OAuthProfile | None, client_id, given, base, *values):
            from studio.access import require_work, shared_mode
            from studio.jobs import start_job
            from studio.recipes import recipe_from_flat

            client_id = browser(client_id)

            def run():
                require_work(profile, "training")
                return start_job(recipe_from_flat(handed_source(form_to_flat(keys, values, base, grpo_section=True), given)), owner=client_id,
                                 wait=shared_mode())

            job, err = safely(run)
            return started(job, err, "Started")

        start.click(start_run, [client, handed, base_flat, *comps], [message, seen, watch], api_name="start_training").then(
            arm_timer, watch, [timer, leave], api_visibility="private")

        def stop_run(client_id):
            from studio.jobs import stop_current

            client_id = browser(client_id)
            job, err = safely(stop_current, client_id, None, "training")
            if err:
                return error_html(err)
            return ok_html(f"Stopping {job.id} after the current step; a checkpoint will be saved.")

        stop.click(stop_run, client, message, api_name="stop_training")

        def poll(profile: gr.OAuthProfile | None, client_id, seen_rows, before, was_polling):
            from studio.access import can_see_logs
            from studio.ui.grpo import completions_markdown

            client_id = browser(client_id) or client_id  # the verified browser id where the app issues one
            job, note, polling, watching = watch_slot(TRAIN_KINDS, client_id, dict(before or {}))
            if job is not None and not can_see_logs(profile):  # a demo's visitor: no one's live view
                job, polling = None, False
            timer_update = gr.update() if polling == was_polling else gr.Timer(active=polling)
            queued = "data-position" in (note or "")
            # the start's own "waiting in line" answer moves to the queue line once (not shown twice); a later
            # message (a second start refused: one job waiting per visitor) stays
            fresh = watching.pop("fresh", False)
            if job is None:
                return ("", None if seen_rows != -1 else gr.update(), "" if seen_rows != -1 else gr.update(), "", "",
                        "" if queued and fresh else gr.update(), -1, written(before, watching), polling, note or "",
                        timer_update, gr.update(visible=queued))  # the line, not twice
            s = job.snapshot()
            bar = progress_html(s) + (error_html(s["error"]) if s.get("error") else "")
            n = len(job.history)
            if n != seen_rows:  # no metrics yet (or a failed start): no chart, not an empty one
                fig = training_chart(job.history, f"{job.kind.upper()} run<br><sup>{job.id}</sup>") if n else None
            else:
                fig = gr.update()
            banner = gr.update()
            if watching.get("banner") and watching.get("id") == job.id and not job.active:
                # "Started …" / "Stopping …" give way to how the run ended and what to do next
                banner, watching = ended_line(job), {**watching, "banner": False}
            return (bar, fig, completions_markdown(job.completions), job_log(job), finished_markdown(job), banner, n,
                    written(before, watching), polling, note or "", timer_update, gr.update(visible=False))

        timer.tick(poll, [client, seen, watch, polled], [progress, chart, completions, logs, samples, message, seen,
                                                         watch, polled, queue_line, timer, leave],
                   show_progress="hidden")

        leave.click(leave_queue_line, [client, watch], [message, queue_line, leave, watch], api_name="leave_queue")

        def list_run_ids():
            from studio.runs import list_runs, run_label

            runs = list_runs()
            choices = [(run_label(j), j.id) for j in runs]
            return (gr.update(choices=choices, value=runs[0].id if runs else None),
                    gr.update(choices=choices, value=None))

        refresh.click(list_run_ids, None, [run_pick, run_other])

        def relist_runs(picked, other):  # the list as it is now, the picks kept while they still exist
            pick, compare = list_run_ids()
            ids = [v for _, v in pick["choices"]]
            return ({**pick, "value": picked if picked in ids else pick["value"]},
                    {**compare, "value": other if other in ids else None})

        # what changes the list: a run starting or ending (the samples show at the end, clear at a start),
        # and opening the list
        samples.change(relist_runs, [run_pick, run_other], [run_pick, run_other], api_name=False,
                       show_progress="hidden")
        history.expand(relist_runs, [run_pick, run_other], [run_pick, run_other], api_name=False)

        def open_selected(run_id, other_id):
            from studio.charts import overlay_chart
            from studio.access import resolve_run
            from studio.runs import LIVE, Run

            if not run_id:
                return None, None, error_html("Pick a run first (Refresh lists them).")

            def load(rid):
                run_dir = resolve_run(rid)  # whose run it is, before anything of it is shown
                return LIVE.get(rid) or Run.from_run_dir(run_dir)

            job, err = safely(load, run_id)
            if err:
                return None, None, error_html(err)
            summary = job.summary or job.snapshot()
            if other_id and other_id != run_id:
                other, err = safely(load, other_id)
                if err:
                    return summary, None, error_html(err)
                return summary, gr.update(value=overlay_chart([(job.id, job.history), (other.id, other.history)]),
                                          label="Runs compared"), ""
            return summary, training_chart(job.history, f"Run {job.id}"), ""

        open_run.click(open_selected, [run_pick, run_other], [run_summary, run_chart, message])

        def resume_selected(profile: gr.OAuthProfile | None, client_id, run_id):
            from studio.access import require_work, resolve_run, shared_mode
            from studio.jobs import start_job

            if not run_id:
                return error_html("Pick a stopped or interrupted run to resume."), -1, {}
            client_id = browser(client_id)

            def run():
                require_work(profile, "training")
                return start_job(None, resume=resolve_run(run_id), owner=client_id, wait=shared_mode())

            job, err = safely(run)
            return started(job, err, "Resuming", " from its last checkpoint")

        resume.click(resume_selected, [client, run_pick], [message, seen, watch], api_name="resume_training").then(
            arm_timer, watch, [timer, leave], api_visibility="private")

        def resume_latest(profile: gr.OAuthProfile | None, client_id):
            from studio.access import may_write, require_work
            from studio.runs import list_runs, resumable

            _, err = safely(require_work, profile, "training")  # before anything about the runs is said
            if err:
                return error_html(err), -1, {}
            client_id = browser(client_id)
            run = next((j for j in list_runs() if resumable(j) and may_write(j.run_dir)), None)
            if run is None:
                return error_html("No stopped or interrupted run with a checkpoint to resume."), -1, {}
            return resume_selected(profile, client_id, run.id)

        resume_last.click(resume_latest, client, [message, seen, watch], api_name="resume_latest").then(
            arm_timer, watch, [timer, leave], api_visibility="private")

        def save_recipe(given, base, *values):
            from studio.recipes import recipe_from_flat

            recipe_obj, err = safely(lambda: recipe_from_flat(handed_source(form_to_flat(keys, values, base, grpo_section=True), given,
                                                                            saving=True)))
            if err:
                raise gr.Error(err)
            folder = Path(tempfile.mkdtemp(prefix="recipe-"))
            path = folder / f"{recipe_obj.name}.yaml"
            path.write_text(recipe_obj.to_yaml(), encoding="utf-8")
            return str(path)

        # One event: the file is written from the values at the click, shown, and the browser downloads it.
        save.click(save_recipe, [handed, base_flat, *comps], recipe_file, api_name="save_recipe").then(
            lambda: gr.update(visible=True), None, recipe_file).then(None, None, None, js=DOWNLOAD_JS)

        def on_load(client_id, name, request: gr.Request = None):
            """The page's first fill of the form (the recipe shown, and this browser's hand-over from the Data tab
            if it made one before a reload), unless a recipe was picked before it finished: the pick stands."""
            client_id = page_browser_id(client_id)  # the stored id if this server issued it, else a new one
            given = handover(client_id)
            if not picked(request):
                filled = pick_recipe(name, given, None)  # on a fresh app this waits for the ML stack's import
                if not picked(request):  # asked again now: a pick made while this fill waited must stand
                    return [client_id] + filled + [given]
            out = [gr.update()] * (len(comps) + 2)
            if given is None:
                return [client_id] + out + [gr.update()]
            hand_over(out, given)
            out[-1] = ok_html(f"Kept your dataset from the Data tab ({shown_source(given['source'])}).")
            return [client_id] + out + [given]

        return {"on_load": (on_load, [client, recipe], [client] + comps + [base_flat, message, handed]),
                "client": client,
                "eval_prompts": widgets["eval_prompts"],
                "dataset_source": ds_source, "handed": handed, "dataset_format": ds_format, "dataset_template": ds_template,
                "run_history": (list_run_ids, None, [run_pick, run_other])}
