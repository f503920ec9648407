"""DPO tab: label preference pairs in the browser, build them from an SFT dataset, train with DPO, watch rewards."""

from __future__ import annotations

import json

import gradio as gr

from studio.ui.common import browser, error_html, job_log, ok_html, progress_html, safely
import studio.ui.heavy  # noqa: F401 - the page heavy work asks (studio.work): is it still there
from studio.ui.train_tab import _report_to_widget, arm_timer, ended_line, queue_html, watch_slot, written

BASE_START = "(base model: a fresh adapter)"
LOSS_TYPES = ["sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm"]
# (recipe key, widget factory): the recipe's own (TRL DPOConfig / ModelConfig) field names
FIELDS = [
    ("beta", lambda: gr.Number(label="beta", minimum=0)),
    ("loss_type", lambda: gr.Dropdown(LOSS_TYPES, label="Loss type", allow_custom_value=True)),
    ("learning_rate", lambda: gr.Number(label="Learning rate")),
    ("max_length", lambda: gr.Number(label="Max length (tokens)", precision=0, minimum=8)),
    ("max_steps", lambda: gr.Number(label="Max steps (-1: use epochs)", precision=0)),
    ("lora_r", lambda: gr.Number(label="LoRA r", precision=0, minimum=1)),
    ("lora_alpha", lambda: gr.Number(label="LoRA alpha", precision=0, minimum=1)),
    ("report_to", lambda: _report_to_widget()),
]
TABLE_HEADERS = ["prompt", "chosen", "rejected", "reward margin", "moved towards chosen"]


def _dpo_recipes() -> list[str]:
    from studio.recipes import RECIPES_DIR

    import yaml

    names = []
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        if (yaml.safe_load(p.read_text("utf-8")) or {}).get("method") == "dpo":
            names.append(p.stem)
    return names


def _runs_with_adapter() -> list[str]:
    from studio.runs import list_runs

    return [j.id for j in list_runs() if j.has_adapter]


def _own_pairs(source) -> str | None:
    """The pairs field's value if it names pairs the person made here (a labelled or built file, their upload):
    a recipe pick keeps those instead of putting the recipe's bundled pairs over them (issue 34, item 8)."""
    text = str(source or "").strip()
    return text if text.startswith(("runs/pairs/", "upload:")) else None


def _labelling_models() -> list[str]:
    """What can write the candidates: the presets, then the visitor's own runs with an adapter (newest first)."""
    from studio.models import PRESETS

    runs, _ = safely(_runs_with_adapter)
    return [*PRESETS, *[r for r in (runs or []) if r not in PRESETS]]


def load_dpo_form(name: str) -> dict:
    from studio.recipes import load_recipe, recipe_to_flat

    from studio.access import resolve

    flat = recipe_to_flat(load_recipe(resolve("recipe", name)))
    if isinstance(flat.get("loss_type"), list):
        flat["loss_type"] = flat["loss_type"][0]
    return flat


def heldout_rows(run_dir) -> list[list]:
    from pathlib import Path

    path = Path(run_dir) / "heldout_margins.json"
    if not path.exists():
        return []
    rows, seen = [], set()
    for r in json.loads(path.read_text("utf-8")):
        if r["prompt"] in seen:  # one row per prompt (files written before the run kept one pair per prompt)
            continue
        seen.add(r["prompt"])
        rows.append([r["prompt"], r["chosen"], r["rejected"], r["reward_margin"], "yes" if r["reward_margin"] > 0 else "no"])
    return rows


HELDOUT_LABEL = ("Held-out pairs after training. Reward margin: how much DPO raised the chosen reply over the "
                 "rejected one against the reference, β·Δ[log p(chosen) − log p(rejected)]; positive = moved "
                 "towards chosen")
HELDOUT_NONE = ("Held-out pairs after training: none. The pairs were too few to hold any out (10 or more make a "
                "test split), so every pair trained the model; label more pairs for this table.")


def heldout_update(run_dir):
    """The held-out table of a finished run, or, when the run held none out, a label that says why."""
    rows = heldout_rows(run_dir)
    return gr.update(value=rows, label=HELDOUT_LABEL) if rows else gr.update(value=[], label=HELDOUT_NONE)


def _label_status(s: dict) -> str:
    from studio.access import shown_path
    from studio.pairs import describe, read_meta

    where = f"`{shown_path(s['file'])}`"  # on a shared page runs/pairs/NAME.jsonl, not the server's folder
    head = f"**{s['name']}**: **{s['pairs']}** pairs saved, {s['skipped']} skipped"
    if s["done"]:
        return f"{head} · all {s['total']} prompts labelled · {where}"
    return (f"{head} · prompt **{s['position'] + 1}** of {s['total']} · {where}  \n"
            f"*{describe(read_meta(s['file']))}*")


def _reply_box(text: str):
    """A candidate for its box: an empty one (the model wrote nothing, even drawn again) is an empty box marked
    "(empty reply)", for the person to write a reply into or to skip."""
    from studio.inference import EMPTY_REPLY

    empty = not str(text or "").strip()
    return gr.update(value="" if empty else text,
                     placeholder=f"{EMPTY_REPLY}: the model wrote nothing; write a reply here, or skip" if empty else "")


def create_dpo_tab(client: gr.BrowserState) -> dict:
    from studio.models import PRESETS, REAL_MODEL_ID

    with gr.Tab("DPO", id="dpo") as dpo_tab:
        gr.Markdown("Align a model with **Direct Preference Optimization** on prompt / chosen / rejected pairs. "
                    "No pairs yet? Label some below, or build them from an SFT dataset.")

        # ---- label pairs in the browser ------------------------------------------------------------------
        with gr.Accordion("Label pairs: pick the better of two replies", open=True):
            with gr.Row():
                pairs_name = gr.Textbox("my-pairs", label="Pairs file name (saved as runs/pairs/NAME.jsonl)", scale=2)
                label_model = gr.Dropdown(list(PRESETS), value=REAL_MODEL_ID, allow_custom_value=True,
                                          label="Model or run that writes the candidates", scale=2)
                label_seed = gr.Number(0, label="Seed", precision=0, scale=1)
                label_tokens = gr.Number(48, label="Max new tokens", precision=0, minimum=1, maximum=512, scale=1)
            with gr.Row():
                typed = gr.Textbox(label="Prompts (a blank line between prompts)", lines=4, scale=3,
                                   value="Question: How do I make tea?\nAnswer:\n\nQuestion: Why is the sky blue?\n"
                                         "Answer:\n\nQuestion: How can I sleep better?\nAnswer:\n\n"
                                         "Question: What is rain?\nAnswer:\n\nQuestion: How do I cook rice?\nAnswer:\n\n"
                                         "Question: What is a noun?\nAnswer:")
                prompt_source = gr.Textbox(label="…or the prompts of a dataset (sample, file or Hub id)",
                                           placeholder="dolly", scale=2)
            start_label = gr.Button("Start or resume labelling", variant="primary")
            label_status = gr.Markdown(elem_id="label-status")
            label_message = gr.HTML(elem_id="label-message")
            shown_prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, elem_id="label-prompt")
            with gr.Row():
                reply_a = gr.Textbox(label="Reply A (edit it to make it better, then pick it)", lines=4,
                                     elem_id="reply-a")
                reply_b = gr.Textbox(label="Reply B (edit it to make it better, then pick it)", lines=4,
                                     elem_id="reply-b")
            with gr.Row():
                pick_a = gr.Button("A is better")
                pick_b = gr.Button("B is better")
                skip = gr.Button("Both bad (skip)")
            shown = gr.State(None)  # {"name", "index", "a", "b"}: what the page showed, as generated

        # ---- build pairs from an SFT dataset -------------------------------------------------------------
        with gr.Accordion("Build pairs from an SFT dataset: gold reply = chosen, the model's own reply = rejected",
                          open=False):
            with gr.Row():
                build_source = gr.Textbox("dolly", label="SFT dataset (sample, file or Hub id)", scale=2)
                build_model = gr.Dropdown(list(PRESETS), value="embedded/tiny-llama", allow_custom_value=True,
                                          label="Model or run whose replies are rejected", scale=2)
                build_name = gr.Textbox("built-pairs", label="Pairs file name", scale=1)
                build_rows = gr.Number(50, label="Max rows", precision=0, minimum=1, scale=1)
            build = gr.Button("Build pairs")
            build_message = gr.HTML(elem_id="build-message")

        # ---- train -----------------------------------------------------------------------------------------
        gr.Markdown("### Train with DPO")
        base_flat = gr.State({})
        with gr.Row():
            recipe = gr.Dropdown(_dpo_recipes(), value="tiny-dpo", label="DPO recipe", scale=1)
            model = gr.Dropdown(list(PRESETS), label="Base model", allow_custom_value=True, scale=2)
            init_adapter = gr.Dropdown([BASE_START], value=BASE_START, label="Start from", scale=2,
                                       elem_id="dpo-init")
            ds_source = gr.Textbox(label="Preference pairs (sample, file, runs/pairs/NAME.jsonl or Hub id)", scale=3)
        widgets = {"model_name_or_path": model, "dataset.source": ds_source}
        with gr.Row(elem_id="dpo-fields"):
            for key, make in FIELDS:
                widgets[key] = make()
        keys, comps = list(widgets), list(widgets.values())
        with gr.Row():
            start = gr.Button("Start DPO", variant="primary")
            stop = gr.Button("Stop", variant="stop")
            leave = gr.Button("Leave the queue", visible=False, elem_id="dpo-leave")
            refresh = gr.Button("Refresh runs")
        message = gr.HTML(elem_id="dpo-message")
        queue_line = gr.HTML(elem_id="dpo-queue")
        progress = gr.HTML(elem_id="dpo-progress")
        chart = gr.Plot(label="Loss and rewards (train solid, eval dashed)", elem_id="dpo-chart")
        table = gr.Dataframe(headers=TABLE_HEADERS, label=HELDOUT_LABEL,
                             wrap=True, elem_id="dpo-heldout", interactive=False,
                             column_widths=["26%", "26%", "24%", "12%", "12%"])
        logs = gr.Textbox(label="Log", lines=6, max_lines=10, autoscroll=True, elem_id="dpo-log")
        seen = gr.State((-1, False))
        watch = gr.State({})  # the job this page started, and whether its "Started" banner is still up
        polled = gr.State(True)  # whether the timer was polling at this page's last poll (only the poll writes it)

        # ---- labelling handlers ------------------------------------------------------------------------------
        def show_session(s: dict, note: str = "", point_train: bool = True):
            """Status, the current prompt and its two candidates (generated here), and what was shown; with
            `point_train`, Train with DPO's pairs field names this file once it holds a pair (not on a page load,
            where the recipe fills that field)."""
            from studio.access import shown_path
            from studio.pairs import candidates

            if s["done"]:
                return (_label_status(s), note or ok_html("All prompts labelled. Train on the file below, or see it "
                                                          "on the Data tab."), "", "", "", None,
                        gr.update(value=shown_path(s["file"])))  # the pairs file's handle, never the server's path
            pair, err = safely(candidates, s["name"])
            if err:
                return _label_status(s), error_html(err), s["prompt"], "", "", None, gr.update()
            a, b = pair
            # Train with DPO's pairs: this file, once it holds a pair (the handle, never the server's path)
            pairs_file = gr.update(value=shown_path(s["file"])) if s["pairs"] and point_train else gr.update()
            return (_label_status(s), note, s["prompt"], _reply_box(a), _reply_box(b),
                    {"name": s["name"], "index": s["position"], "a": a, "b": b}, pairs_file)

        def begin(profile: gr.OAuthProfile | None, client_id, name, model_ref, seed, tokens, text, source):
            from studio.access import require_work
            from studio.errors import whole_number
            from studio.pairs import dataset_prompts, prompts_from_text, start_labelling

            client_id = browser(client_id)

            def run():
                require_work(profile, "labelling pairs")
                prompts = dataset_prompts(source, model_ref) if (source or "").strip() else prompts_from_text(text)
                return start_labelling(name, model_ref, prompts, seed=whole_number(seed or 0, "seed", 0, 2**32 - 1),
                                       max_new_tokens=whole_number(tokens or 48, "max new tokens", 1, 512))

            s, err = safely(run)
            if err:
                return "", error_html(err), "", "", "", None, gr.update()
            return show_session(s)

        label_outputs = [label_status, label_message, shown_prompt, reply_a, reply_b, shown, ds_source]
        start_label.click(begin, [client, pairs_name, label_model, label_seed, label_tokens, typed, prompt_source],
                          label_outputs, api_name="start_labelling")

        def decide(choice):
            def handler(state, a, b):
                from studio.pairs import open_labelling, record_decision

                if not state:
                    return ("", error_html("Start or resume a labelling session first."), gr.update(), gr.update(),
                            gr.update(), state, gr.update())
                s, err = safely(record_decision, state["name"], state["index"], choice, (state["a"], state["b"]),
                                (a, b))
                if err:
                    current, _ = safely(open_labelling, state["name"])
                    if current and current["position"] != state["index"]:  # another tab went on: show where it is
                        return show_session(current, error_html(err))
                    # a refusal (an empty side, two equal sides) keeps the boxes as the person left them: nothing
                    # is drawn again and no edit is lost
                    return ("" if not current else _label_status(current), error_html(err), gr.update(),
                            gr.update(), gr.update(), state, gr.update())
                return show_session(s)

            return handler

        pick_a.click(decide("A"), [shown, reply_a, reply_b], label_outputs, api_name="label_a")
        pick_b.click(decide("B"), [shown, reply_a, reply_b], label_outputs, api_name="label_b")
        skip.click(decide("skip"), [shown, reply_a, reply_b], label_outputs, api_name="label_skip")

        session_form = [pairs_name, label_model, label_seed, label_tokens, typed, prompt_source]

        def resume_latest(client_id):
            """A reloaded page picks up this browser's session touched last, at the prompt where it stopped, with
            the form showing that session (its model, seed, token limit and prompts), not the defaults."""
            from studio.pairs import latest_session, open_labelling

            client_id = browser(client_id)
            name = latest_session()
            if not name:
                return [gr.update()] * (len(session_form) + len(label_outputs))
            s, err = safely(open_labelling, name)
            if err:
                return [gr.update()] * len(session_form) + ["", error_html(err)] + [gr.update()] * (
                    len(label_outputs) - 2)
            form = [name, s["model"], s.get("seed", 0), s.get("max_new_tokens", 48), "\n\n".join(s["prompts"]), ""]
            return [*form, *show_session(s, point_train=False)]

        # ---- pair builder -------------------------------------------------------------------------------------
        def build_from_sft(profile: gr.OAuthProfile | None, source, model_ref, name, rows, progress=gr.Progress()):
            from studio.access import check_data_source, require_work
            from studio.errors import whole_number
            from studio.pairs import build_pairs, pairs_path

            def run():
                require_work(profile, "building pairs")
                check_data_source(source)
                return build_pairs(source, pairs_path(name), model_ref,
                                   max_rows=whole_number(rows or 50, "max rows", 1, 1000),
                                   progress=lambda done, total: progress((done, total), desc="sampling replies"))

            result, err = safely(run)
            if err:
                return error_html(err), gr.update()
            from studio.access import shown_path

            return ok_html(f"{result['pairs']} pairs written to {shown_path(result['out'])} ({result['skipped']} "
                           f"skipped: the sample was empty or equal to the gold reply). {result['meta']['how']}."), \
                shown_path(result["out"])  # training reads runs/… from the runs folder (access.in_runs)

        build.click(build_from_sft, [build_source, build_model, build_name, build_rows], [build_message, ds_source],
                    api_name="build_pairs")

        # ---- training handlers --------------------------------------------------------------------------------
        def fill(name, pairs_now=None):
            from studio.ui.train_tab import _flat_to_widget

            flat, err = safely(load_dpo_form, name)
            if err:
                return [gr.update()] * len(comps) + [{}, error_html(err)]
            kept = _own_pairs(pairs_now)
            if kept and kept != flat.get("dataset.source"):  # pairs this person labelled, built or uploaded stay
                flat["dataset.source"] = kept
            note = ok_html(f"Kept your pairs {kept}: the recipe's own ({load_dpo_form(name).get('dataset.source')}) "
                           "are one edit away.") if kept and kept == flat["dataset.source"] and kept != (
                load_dpo_form(name).get("dataset.source")) else ""
            return [_flat_to_widget(k, flat.get(k)) for k in keys] + [flat, note]

        recipe.change(fill, [recipe, ds_source], comps + [base_flat, message], api_name="fill_dpo")
        # the labeller's list: the presets and this visitor's own runs, fresh each time it is opened
        label_model.focus(lambda: gr.update(choices=_labelling_models()), None, label_model, api_name=False,
                          show_progress="hidden")

        timer = gr.Timer(1.0)  # polls while this page's DPO job runs or waits; a first tick re-attaches after a load

        def start_run(profile: gr.OAuthProfile | None, client_id, base, start_from, *values):
            from studio.access import require_work, shared_mode
            from studio.jobs import start_job
            from studio.recipes import recipe_from_flat
            from studio.inference import init_adapter_run
            from studio.pairs import load_pairs
            from studio.ui.train_tab import form_to_flat

            client_id = browser(client_id)

            def run():
                require_work(profile, "training")
                flat = form_to_flat(keys, values, base)
                flat["init_adapter"] = None if start_from in (None, "", BASE_START) else start_from
                recipe_obj = recipe_from_flat(flat)
                init_adapter_run(recipe_obj)  # one line now, not a failed job later
                load_pairs(recipe_obj)
                return start_job(recipe_obj, owner=client_id, wait=shared_mode())

            job, err = safely(run)
            if err:
                return error_html(err), (-1, False), {}
            if not hasattr(job, "run_dir"):  # a Ticket: the slot is busy, the job waits in line
                # (-2, True): the next poll empties the chart and table (they showed this page's previous run)
                return (queue_html(job) or ok_html("Your job is waiting in line."), (-2, True),
                        {"ticket": job.id, "fresh": True})
            return (ok_html(f"Started {job.id}. Closing the browser does not stop it; reload to re-attach."), (-1, False),
                    {"id": job.id, "banner": True})

        start.click(start_run, [client, base_flat, init_adapter, *comps], [message, seen, watch],
                    api_name="start_dpo").then(arm_timer, watch, [timer, leave], api_visibility="private")

        def stop_run(client_id):
            from studio.jobs import stop_current

            client_id = browser(client_id)
            job, err = safely(stop_current, client_id, "dpo", "DPO")
            if err:
                return error_html(err)
            return ok_html(f"Stopping {job.id} after the current step; a checkpoint will be saved.")

        stop.click(stop_run, client, message, api_name="stop_dpo")

        def poll(profile: gr.OAuthProfile | None, client_id, seen_state, before, was_polling):
            from studio.access import can_see_logs
            from studio.charts import dpo_chart

            client_id = browser(client_id) or client_id  # the verified browser id where the app issues one
            # this tab's own last run, never another tab's, and never another visitor's (studio.access.may_watch)
            job, note, polling, watching = watch_slot(("dpo",), client_id, dict(before or {}))
            if job is not None and not can_see_logs(profile):
                job, polling = None, False
            timer_update = gr.update() if polling == was_polling else gr.Timer(active=polling)
            queued = "data-position" in (note or "")
            fresh = watching.pop("fresh", False)  # the start's queue answer moves to the queue line once (train_tab)
            if job is None:
                cleared = seen_state[0] == -1 and not seen_state[1]
                return ("", gr.update() if cleared else None, gr.update() if cleared else [], "", (-1, False),
                        "" if queued and fresh else gr.update(), written(before, watching), polling, note or "", timer_update,
                        gr.update(visible=queued))
            s = job.snapshot()
            bar = progress_html(s) + (error_html(s["error"]) if s.get("error") else "")
            n, finished = len(job.history), job.summary is not None
            if n != seen_state[0]:
                fig = dpo_chart(job.history, f"DPO run<br><sup>{job.id}</sup>") if n else None
            else:
                fig = gr.update()
            rows = heldout_update(job.run_dir) if finished and not seen_state[1] else gr.update()
            banner = gr.update()
            if watching.get("banner") and watching.get("id") == job.id and not job.active:
                banner, watching = ended_line(job), {**watching, "banner": False}  # how it ended, what next
            return (bar, fig, rows, job_log(job), (n, finished), banner, written(before, watching), polling,
                    note or "", timer_update, gr.update(visible=False))

        timer.tick(poll, [client, seen, watch, polled], [progress, chart, table, logs, seen, message, watch, polled,
                                                         queue_line, timer, leave], show_progress="hidden")

        from studio.ui.train_tab import leave_queue_line  # one button, two tabs

        leave.click(leave_queue_line, [client, watch], [message, queue_line, leave, watch], api_name="leave_dpo_queue")

        def list_starts():
            ids, _ = safely(_runs_with_adapter)
            return gr.update(choices=[BASE_START, *(ids or [])])

        refresh.click(list_starts, None, init_adapter)
        # runs finished elsewhere (an SFT run on the Train tab, this tab's own) show up without Refresh
        dpo_tab.select(list_starts, None, init_adapter, api_name=False)
        table.change(list_starts, None, init_adapter, api_name=False, show_progress="hidden")

        def on_load(name):
            return fill(name) + [list_starts()]

    return {"dataset": widgets["dataset.source"],  # what the Data tab's "Use this dataset" fills
            "on_load": [(on_load, [recipe], comps + [base_flat, message, init_adapter]),
                        (resume_latest, client, [*session_form, *label_outputs])]}
