"""Evaluate tab: base vs tuned side by side, prompt suites, a judge, lm-eval tasks, LoRA vs full, saved results."""

from __future__ import annotations

import html

import gradio as gr

from studio.runs import adapter_runs
from studio.ui.common import error_html, ok_html, page_progress, safely
import studio.ui.heavy  # noqa: F401 - the page heavy work asks (studio.work): is it still there

TEST_SPLIT = "test split"
SORTS = ["Δ descending", "Δ ascending", "row order"]
CHART_KEYS = ["bleu", "rouge1", "rouge2", "rougeL", "f1", "distinct1", "distinct2"]


def report_row(*inputs, button: str, button_id: str | None = None, message_id: str | None = None):
    """An accordion's controls: its inputs (factories, built in one row) and a button, the message below.

    Returns (*inputs, button, message)."""
    with gr.Row():
        built = [make() for make in inputs]
        btn = gr.Button(button, elem_id=button_id)
    return (*built, btn, gr.HTML(elem_id=message_id))


def metrics_rows(result: dict) -> tuple[list[str], list[list]]:
    keys = list(next(iter(result["metrics"].values())))
    rows = [[label, *[round(m[k], 2) if m.get(k) is not None else None for k in keys]]
            for label, m in result["metrics"].items()]
    return ["model", *keys], rows


def side_by_side(result: dict, order: str) -> tuple[list[str], list[list]]:
    """Prompt, reference and each model's output; sortable by the per-row score difference."""
    labels, key = result["labels"], result.get("score_key")
    rows = list(result["rows"])
    if key and order != "row order":
        rows.sort(key=lambda r: r["delta"], reverse=order == "Δ descending")
    limit = result.get("config", {}).get("max_new_tokens")
    headers = ["#", *([f"Δ {key}"] if key else []), "prompt", "reference", *labels]
    out = [[r["id"], *([round(r["delta"], 2)] if key else []), r["prompt"], r["reference"],
            *[shown_reply(r["outputs"][lab], lab in r.get("cut", ()), limit) for lab in labels]] for r in rows]
    return headers, out


def shown_reply(output, cut: bool = False, limit=None) -> str:
    """A reply as the table shows it: an empty one named, one stopped by the token limit marked."""
    from studio.inference import marked_reply

    turns = [output] if isinstance(output, str) else list(output)
    return "\n— next turn —\n".join(marked_reply(t, cut and i == len(turns) - 1, limit) for i, t in enumerate(turns))


def side_by_side_update(result: dict, order: str):
    headers, rows = side_by_side(result, order)
    n_models = len(result["labels"])
    fixed = ["4%", *(["6%"] if result.get("score_key") else []), "26%", "14%"]
    rest = (100 - sum(int(w[:-1]) for w in fixed)) // n_models
    return gr.update(value=rows, headers=headers, column_widths=fixed + [f"{rest}%"] * n_models)


def definitions_markdown(result: dict) -> str:
    lines = [f"- **{k}**: {html.escape(v)}" for k, v in result["definitions"].items()]
    cfg = result["config"]
    where = cfg["suite"] or (f"{cfg['data']['source']} ({cfg['data']['split']} split, {cfg['data']['rows']} rows)"
                             if cfg.get("data") else "")
    note = f"Greedy decoding, at most {cfg['max_new_tokens']} new tokens" + (
        ", answers cut at the first newline (single-line references)" if cfg.get("stop") else "")
    if cfg.get("chat_template_for"):
        note += (f". {', '.join(cfg['chat_template_for'])}: an instruct model, asked each row as a chat message "
                 "through its chat template (a raw prompt is a finished turn to it: it would reply nothing)")
    rows = result.get("rows") or []  # a result saved before rows were kept has none
    empty = {lab: sum(1 for r in rows if not any(str(t).strip() for t in (
        [r["outputs"][lab]] if isinstance(r["outputs"][lab], str) else r["outputs"][lab])))
        for lab in result.get("labels") or []}
    if any(empty.values()):
        note += ". Empty replies (scored 0): " + ", ".join(f"{lab} {n}/{len(rows)}"
                                                           for lab, n in empty.items() if n)
    from studio.access import shown_path
    from studio.evaluate.intervals import intervals_markdown

    sure = intervals_markdown(result)  # 95 % intervals and, in words, which differences are within noise
    return (f"**{result['name']}** · {where} · {note}. Saved to `{shown_path(result.get('path', ''))}`\n\n"
            + (sure + "\n\n" if sure else "") + "\n".join(lines))


def show_result(result: dict, order: str):
    """Everything the tab draws for one result (fresh or reopened)."""
    from studio.charts import metrics_bar_chart
    from studio.evaluate import export_result

    h1, m_rows = metrics_rows(result)
    keys = [k for k in CHART_KEYS if k in next(iter(result["metrics"].values()))]
    csv_path, json_path = export_result(result)
    labels = result["labels"]
    return (gr.update(value=m_rows, headers=h1), metrics_bar_chart(result["metrics"], keys),
            side_by_side_update(result, order), definitions_markdown(result), gr.update(value=str(csv_path)),
            gr.update(value=str(json_path)), gr.update(value=str(csv_path.with_name(f"{result['name']}-metrics.csv"))),
            gr.update(choices=labels, value=labels[-1]),
            gr.update(choices=labels, value=labels[0]))


def grpo_run_names() -> list[str]:
    """The GRPO runs with an adapter this visitor may see (studio.runs.list_runs asks studio.access), newest first."""
    import re

    from studio.runs import list_runs

    method = re.compile(r"^method:\s*grpo\s*$", re.M)
    return [j.id for j in list_runs() if j.has_adapter and (j.run_dir / "recipe.yaml").exists()
            and method.search((j.run_dir / "recipe.yaml").read_text("utf-8"))]


def create_evaluate_tab(client: gr.BrowserState) -> dict:
    from studio.evaluate import LOCAL_TASKS, RECIPE_SUITE, SCORE_KEY, SUITES
    from studio.models import PRESETS, REAL_MODEL_ID

    with gr.Tab("Evaluate", id="evaluate") as tab:
        gr.Markdown("Compare the **base model** (loaded on its own) with one or more **runs** on the same rows "
                    "of a test split or a prompt suite. Generation is greedy and batched.")
        result_state = gr.State(None)
        with gr.Row():
            runs = gr.Dropdown([], multiselect=True, label="Runs (each run's base gets its own column)", scale=3,
                               elem_id="eval-runs")
            model = gr.Dropdown(list(PRESETS), value=None, allow_custom_value=True, scale=2,
                                label="Also a model (preset, Hub id or local folder) — optional")
            refresh = gr.Button("Refresh runs", scale=0)
        with gr.Row():
            suite = gr.Dropdown([TEST_SPLIT, RECIPE_SUITE, *SUITES, "upload"], value=TEST_SPLIT, label="Rows")
            data = gr.Textbox(label="Dataset for the test split (empty: the run's own)", placeholder="empty: the run's own held-out rows (its dataset.eval_source if set); or a sample (quotes), a file or a Hub id")
            limit = gr.Number(value=20, precision=0, minimum=1, label="Max rows")
            max_new = gr.Number(value=32, precision=0, minimum=1, maximum=512, label="Max new tokens")
            name = gr.Textbox(label="Result name (optional)")
        upload = gr.File(label="Your suite (JSONL: {\"prompt\": …} or {\"turns\": […]}, optional \"reference\")",
                         file_types=[".jsonl"], visible=False, elem_id="eval-upload")
        go = gr.Button("Evaluate", variant="primary", elem_id="eval-go")
        message = gr.HTML(elem_id="eval-message")
        # before a result the empty tables name their columns (not Gradio's "1 2 3")
        metrics_table = gr.Dataframe(headers=["model", "BLEU, ROUGE, F1, exact match, distinct-n, loss, perplexity"],
                                     label="Metrics", interactive=False, elem_id="eval-metrics")
        chart = gr.Plot(label="Metrics chart", elem_id="eval-chart")
        order = gr.Radio(SORTS, value=SORTS[0], label="Sort rows by the per-row ROUGE-L difference (last column − first)",
                         elem_id="eval-sort")
        rows_table = gr.Dataframe(headers=["#", f"Δ {SCORE_KEY}", "prompt", "reference", "each model's output"],
                                  label="Side by side (click a header to sort by it too)", interactive=False, wrap=True,
                                  elem_id="eval-rows")
        definitions = gr.Markdown(elem_id="eval-definitions")
        with gr.Row():
            csv_dl = gr.DownloadButton("Download rows (CSV)", elem_id="eval-csv")
            metrics_dl = gr.DownloadButton("Download metrics (CSV)", elem_id="eval-metrics-csv")
            json_dl = gr.DownloadButton("Download JSON", elem_id="eval-json")
        with gr.Accordion("Saved results", open=True):
            with gr.Row():
                saved = gr.Dropdown([], label="Saved result (run/name)", scale=3, elem_id="eval-saved")
                list_btn = gr.Button("Refresh", scale=0)
                open_btn = gr.Button("Open", scale=0, elem_id="eval-open")
        with gr.Accordion("Judge (optional): a model scores each pair of answers in both orders", open=False):
            with gr.Row():
                judge_model = gr.Dropdown(list(PRESETS), value=REAL_MODEL_ID, allow_custom_value=True,
                                          label="Judge (model or run)")
                judge_a = gr.Dropdown([], label="A (win rate is for A)")
                judge_b = gr.Dropdown([], label="B")
                judge_btn = gr.Button("Judge")
            judge_out = gr.HTML(elem_id="eval-judge")
        with gr.Accordion("Benchmark tasks (lm-evaluation-harness)", open=False):
            tasks, task_limit, lm_btn, lm_message = report_row(
                lambda: gr.Textbox(value=", ".join(LOCAL_TASKS), label="Tasks (comma-separated; Hub tasks need a "
                                                                       "connection)"),
                lambda: gr.Number(value=32, precision=0, minimum=1, label="Max documents per task"),
                button="Run on the base and the runs")
            lm_table = gr.Dataframe(label="lm-eval results", interactive=False, elem_id="eval-lmeval")
        with gr.Accordion("LoRA vs full fine-tuning", open=False):
            lvf_ref, lvf_btn, lvf_message = report_row(
                lambda: gr.Dropdown([], allow_custom_value=True, label="Run or recipe"), button="Report")
            lvf_table = gr.Dataframe(label="From the model's config, no weights loaded", interactive=False,
                                     elem_id="eval-lvf")
        with gr.Accordion("DPO runs: preference accuracy on held-out pairs", open=False):
            dpo_run, dpo_btn, dpo_message = report_row(
                lambda: gr.Dropdown([], allow_custom_value=True, label="DPO run"), button="Report")
            dpo_table = gr.Dataframe(label="Policy vs reference on the run's held-out pairs", interactive=False,
                                     elem_id="eval-dpo")
        with gr.Accordion("LAPDOG runs: closed-book vs fixed retriever vs LAPDOG retriever (the paper's table)",
                          open=False):
            gr.Markdown("The run's held-out persona dialogues answered three ways, greedily: its stage-1 adapter "
                        "with no stories; its final adapter with the stories the untrained embedder retrieves; its "
                        "final adapter with the stories its trained query encoder retrieves. F1, BLEU and ROUGE-L "
                        "as in the paper; the results fill the tables above and are saved like any other.")
            persona_run, persona_limit, persona_btn, persona_message = report_row(
                lambda: gr.Dropdown([], label="LAPDOG run", elem_id="eval-persona-run", scale=3),
                lambda: gr.Number(value=32, precision=0, minimum=1, label="Max dialogues"),
                button="Evaluate the run", button_id="eval-persona-go", message_id="eval-persona-message")
        with gr.Accordion("GRPO runs: rewards vs base on held-out prompts", open=False, elem_id="eval-grpo"):
            gr.Markdown("The run and its base answer the run's held-out prompts (greedy), scored by the reward "
                        "functions the run trained on: mean reward and accuracy with 95 % intervals over prompts, "
                        "and the difference run − base (within noise when its interval holds 0).")
            grpo_run, grpo_limit, grpo_btn, grpo_message = report_row(
                lambda: gr.Dropdown([], label="GRPO run", elem_id="eval-grpo-run", scale=3),
                lambda: gr.Number(value=50, precision=0, minimum=1, label="Max prompts"),
                button="Rewards vs base", button_id="eval-grpo-go", message_id="eval-grpo-message")
            grpo_table = gr.Markdown(elem_id="eval-grpo-report")

        suite.change(lambda s: gr.update(visible=s == "upload"), suite, upload)

        def refresh_lists():
            from studio.evaluate import list_results
            from studio.recipes import RECIPES_DIR

            names, err = safely(adapter_runs)
            results, err2 = safely(list_results)
            recipes = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
            names, results = names or [], results or []
            return (gr.update(choices=names), gr.update(choices=results, value=results[0] if results else None),
                    gr.update(choices=names + recipes, value=(names + recipes or [None])[0]))

        refresh.click(refresh_lists, None, [runs, saved, lvf_ref])
        list_btn.click(refresh_lists, None, [runs, saved, lvf_ref])

        outputs = [metrics_table, chart, rows_table, definitions, csv_dl, json_dl, metrics_dl, judge_a, judge_b]
        nothing = [gr.update()] * len(outputs)

        def evaluate(run_names, extra_model, rows_from, dataset, n, n_new, result_name, suite_file, sort,
                     progress=gr.Progress()):
            from studio.evaluate import compare

            refs = list(run_names or []) + ([extra_model] if extra_model else [])
            if rows_from == "upload" and not suite_file:
                return [None, error_html("Upload a JSONL suite first."), *nothing, gr.update()]
            if rows_from == "upload":
                from studio.access import claim_upload

                suite_file, err = safely(claim_upload, suite_file)  # the visitor's own copy from now on
                if err:
                    return [None, error_html(err), *nothing, gr.update()]
            chosen = None if rows_from == TEST_SPLIT else (suite_file if rows_from == "upload" else rows_from)

            def run():
                from studio.errors import whole_number

                return compare(refs, data=(dataset or None) if chosen is None else None, suite=chosen,
                               limit=whole_number(n, "rows", 1, 10_000) if n else None,
                               max_new_tokens=whole_number(n_new or 32, "max new tokens", 1, 1024),
                               name=result_name or None, progress=lambda f, text: progress(f, desc=text))

            from studio.embedded import one_time_progress

            with one_time_progress(page_progress(progress)):  # a model's one-time conversion says so
                result, err = safely(run)
            if err:
                return [None, error_html(err), *nothing, gr.update()]
            from studio.evaluate import list_results

            return [result, ok_html(f"Saved {result['owner']}/{result['name']}"), *show_result(result, sort),
                    gr.update(choices=list_results(), value=f"{result['owner']}/{result['name']}")]

        go.click(evaluate, [runs, model, suite, data, limit, max_new, name, upload, order],
                 [result_state, message, *outputs, saved], api_name="evaluate")

        def resort(result, sort):
            if not result:
                return gr.update()
            return side_by_side_update(result, sort)

        order.change(resort, [result_state, order], rows_table)

        def reopen(ref, sort):
            from studio.evaluate import load_result

            if not ref:
                return [None, error_html("Pick a saved result (Refresh lists them)."), *nothing]
            result, err = safely(load_result, ref)
            if err:
                return [None, error_html(err), *nothing]
            return [result, ok_html(f"Opened {ref}"), *show_result(result, sort)]

        open_btn.click(reopen, [saved, order], [result_state, message, *outputs], api_name="open_result")

        def persona_table(run_id, n, sort, progress=gr.Progress()):
            from studio.evaluate import list_results, persona_report

            if not run_id:
                return [gr.update(), gr.update(), *nothing, gr.update(), error_html("Pick a finished LAPDOG run.")]
            result, err = safely(persona_report, run_id, limit=int(n or 32),
                                 progress=lambda f, text: progress(f, desc=text))
            if err:
                return [gr.update(), gr.update(), *nothing, gr.update(), error_html(err)]
            ref = f"{result['owner']}/{result['name']}"
            scores = "; ".join(f"{lab}: F1 {m['f1']:.2f}, BLEU {m['bleu']:.2f}, ROUGE-L {m['rougeL']:.2f}"
                               for lab, m in result["metrics"].items())
            summary = (f"{result['config']['data']['rows']} {result['config']['data']['split']} dialogues. {scores}. "
                       f"The trained retriever's top story differs from the fixed one's for "
                       f"{100 * result['config']['persona']['top1_changed']:.0f}% of them.")
            return [result, ok_html(f"Saved {ref}"), *show_result(result, sort),
                    gr.update(choices=list_results(), value=ref), ok_html(summary)]

        persona_btn.click(persona_table, [persona_run, persona_limit, order],
                          [result_state, message, *outputs, saved, persona_message], api_name="persona_report")

        def rewards_vs_base(run_id, n, progress=gr.Progress()):
            from studio.embedded import one_time_progress
            from studio.errors import whole_number
            from studio.evaluate.rewards import grpo_report
            from studio.ui.grpo import report_text

            if not run_id:
                return error_html("Pick a finished GRPO run (Refresh runs lists them)."), ""

            def run():
                return grpo_report(run_id, limit=whole_number(n or 50, "max prompts", 1, 5000),
                                   progress=lambda f, text: progress(f, desc=text))

            with one_time_progress(page_progress(progress)):  # a model's one-time conversion says so
                report, err = safely(run)
            if err:
                return error_html(err), ""
            return (ok_html(f"{report['run']} and its base on {report['prompts']} held-out prompts "
                            f"({report['source']})."), report_text(report))

        grpo_btn.click(rewards_vs_base, [grpo_run, grpo_limit], [grpo_message, grpo_table], api_name="rewards_report")

        def run_judge(result, judge_ref, a, b):
            from studio.evaluate import judge, save_result

            if not result:
                return error_html("Evaluate or open a result first.")
            out, err = safely(judge, result, judge_ref, a, b)
            if err:
                return error_html(err)
            result.setdefault("judgements", []).append({k: v for k, v in out.items() if k != "verdicts"})
            safely(save_result, result)
            return ok_html(f"{a} vs {b}, judged by {judge_ref} in both orders: win rate for {a} "
                           f"{out['win_rate_a']:.1f}% over {out['rows']} rows ({out['wins_a']} wins, "
                           f"{out['wins_b']} losses, {out['ties']} ties: the judge changed its pick with the order)")

        judge_btn.click(run_judge, [result_state, judge_model, judge_a, judge_b], judge_out)

        def run_tasks(run_names, extra_model, task_text, n):
            from studio.evaluate import lm_eval_compare

            refs = list(run_names or []) + ([extra_model] if extra_model else [])
            table, err = safely(lm_eval_compare, refs, task_text.split(","), int(n) if n else None)
            if err:
                return gr.update(), error_html(err)
            return gr.update(value=table["rows"], headers=table["headers"]), ""

        lm_btn.click(run_tasks, [runs, model, tasks, task_limit], [lm_table, lm_message], api_name="lm_eval")

        def report(ref):
            from studio.evaluate import lora_vs_full

            out, err = safely(lora_vs_full, ref)
            if err:
                return gr.update(), error_html(err)
            mb = lambda b: round(b / 2**20, 3)  # noqa: E731
            rows = [[kind, f"{v['trainable']:,}", f"{v['total']:,}", round(v["percent"], 3),
                     mb(v["checkpoint_bytes"]) if v["checkpoint_measured"] else f"≈{mb(v['checkpoint_bytes'])}",
                     mb(v["grad_bytes"]), mb(v["optimizer_bytes"])] for kind, v in (("LoRA", out["lora"]),
                                                                                     ("full", out["full"]))]
            headers = ["", "trainable", "total", "trainable %", f"checkpoint MiB ({out['dtype']})", "grad MiB (fp32)",
                       "AdamW state MiB (fp32)"]
            return gr.update(value=rows, headers=headers), ""

        lvf_btn.click(report, lvf_ref, [lvf_table, lvf_message])

        def preference(run_id):
            from studio.evaluate import dpo_report

            if not run_id:
                return gr.update(), error_html("Pick a finished DPO run.")
            out, err = safely(dpo_report, run_id)
            if err:
                return gr.update(), error_html(err)
            rows = [[r["prompt"][:80], round(r["policy_margin"], 3), round(r["reference_margin"], 3),
                     round(r["reward_margin"], 3), "yes" if r["reward_margin"] > 0 else "no"] for r in out["rows"]]
            summary = (f"{out['run']}, {out['pairs']} {out['split']} pairs: reward prefers chosen on "
                       f"{out['preference_accuracy']:.1f}%, mean reward margin {out['mean_reward_margin']:+.3f} "
                       f"(log-prob margin: policy {out['policy_logp_margin']:+.2f}, reference "
                       f"{out['reference_logp_margin']:+.2f})")
            return (gr.update(value=rows, headers=["prompt", "policy log-p margin", "reference log-p margin",
                                                   "reward margin", "prefers chosen"]), ok_html(summary))

        dpo_btn.click(preference, dpo_run, [dpo_table, dpo_message], api_name="dpo_report")

        def dpo_runs():
            from studio.runs import list_runs

            return gr.update(choices=[j.id for j in list_runs() if j.kind == "dpo" or (
                j.summary or {}).get("method") == "dpo"])

        refresh.click(dpo_runs, None, dpo_run)

        def persona_runs():
            from studio.chat import lapdog_runs

            names, _ = safely(lapdog_runs)
            return gr.update(choices=names or [])

        refresh.click(persona_runs, None, persona_run)

        def grpo_runs():
            names, _ = safely(grpo_run_names)
            return gr.update(choices=names or [])

        refresh.click(grpo_runs, None, grpo_run)

        def run_choices():  # opening the tab lists runs finished since the page loaded; picks are kept
            names, _ = safely(adapter_runs)
            return gr.update(choices=names or [])

        tab.select(run_choices, None, runs, api_name=False)
        tab.select(dpo_runs, None, dpo_run, api_name=False)
        tab.select(persona_runs, None, persona_run, api_name=False)
        tab.select(grpo_runs, None, grpo_run, api_name=False)

        return {"dataset": data,  # what the Data tab's "Use this dataset" fills
                "on_load": [(refresh_lists, None, [runs, saved, lvf_ref]), (dpo_runs, None, dpo_run),
                            (persona_runs, None, persona_run), (grpo_runs, None, grpo_run)]}
