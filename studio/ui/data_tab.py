"""Data tab: pick a source, see the detected format, preview, splits and token lengths."""

from __future__ import annotations

import gradio as gr

from studio.ui.common import error_html, ok_html, page_progress, safely, shown_source

SOURCES = ["Bundled sample", "Upload", "Local path", "Hub dataset"]


def inspect(kind, sample, upload, path, hub_id, hub_config, hub_split, fmt, template, tokenizer_name,
            progress=gr.Progress()):
    """Thin handler: one backend call, shaped for the components. A first use that builds or converts a
    model (the embedded one, SmolLM2's offline copy) says so on the progress bar, step by step."""
    from studio.charts import length_histogram
    from studio.data import prepare_dataset

    source = {"Bundled sample": sample, "Upload": upload, "Local path": path, "Hub dataset": hub_id}[kind]
    if not source:
        return error_html(f"{kind}: nothing chosen yet"), "", None, None

    def run():
        from studio.access import check_data_source, check_model_source, claim_upload
        from studio.models import load_tokenizer

        nonlocal source
        if kind == "Upload":
            source = claim_upload(source)  # from now on the file is this visitor's, and only theirs to read
        check_data_source(source)
        tok = load_tokenizer(check_model_source(tokenizer_name)) if tokenizer_name else None
        return prepare_dataset(source, None if fmt == "auto" else fmt, template or None, config=hub_config or None,
                               split=hub_split or None, tokenizer=tok), tok

    from studio.embedded import one_time_progress

    with one_time_progress(page_progress(progress)):
        result, err = safely(run)
    if err:
        return error_html(err), "", None, None
    data, tok = result
    s = data.summary()
    dropped = f"{s['dropped']} dropped ({', '.join(f'{v} {k}' for k, v in data.dropped.items())})" if s["dropped"] else "0 dropped"
    info = (f"**{data.source}** · format **{data.format.name}** ({data.format.label}) → TRL *{data.format.kind}* · "
            f"**{s['rows']}** usable rows, {dropped} · splits: "
            + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + f" · {data.split_line()}"
            + f"  \nSplits here are {DATA_TAB_SPLITS} (train/validation/test); {RUN_SPLITS}")
    if data.lengths:
        st = data.length_stats()
        info += f"  \nTokens per example: min {st['min']}, median {st['median']}, p95 {st['p95']}, max {st['max']}"
    if "validation" not in s["splits"]:
        info += (f"  \n⚠️ {s['rows']} rows are too few for a validation split (10 or more make one): "
                 "training on this data runs without evaluation, and the log says so.")
    train = data.splits["train"]
    preview = "\n\n".join(preview_example(i, train[i], tok) for i in range(min(4, len(train))))
    fig = length_histogram(data.lengths) if data.lengths else None
    return ok_html("Loaded."), info + "\n\n" + preview, fig, {"source": str(source), "format": data.format.name,
                                                               "kind": data.format.kind,
                                                               "template": template or None,
                                                               "prompts": sample_prompts(data, tok)}


DATA_TAB_SPLITS = "80/10/10"  # prepare_dataset's default, what this tab shows
RUN_SPLITS = ("a run splits by its recipe's `dataset.splits` (the lapdog recipes 90/10/0, smollm2-persona-convai2 "
              "80/0/20), so its counts can differ: the run log's `data:` line gives them.")


NOT_LOADED = "Changed: press <b>Load dataset</b> to read it."


def stale():
    """What the preview shows once a field changed: nothing of the old data, and nothing to hand over."""
    return f'<div class="studio-note">{NOT_LOADED}</div>', "", None, None


def _fence(text: str) -> str:
    from studio.data import clip_example

    return "```text\n" + clip_example(text).replace("```", "ˋˋˋ") + "\n```"


def preview_example(i: int, row: dict, tokenizer) -> str:
    """One example as the model sees it; a prompt/completion pair as its two parts (the loss is on the completion)."""
    from studio.data import render_example

    if "prompt" in row and "completion" in row:
        if isinstance(row["prompt"], list):
            prompt, completion = render_example({"messages": row["prompt"]}, tokenizer), render_example(
                {"messages": row["completion"]}, tokenizer)
        else:
            prompt, completion = row["prompt"], row["completion"]
        return (f"**Example {i + 1}**  \nprompt (context, no loss):\n{_fence(prompt)}\n"
                f"completion (what the model learns to write):\n{_fence(completion)}")
    return f"**Example {i + 1}**\n{_fence(render_example(row, tokenizer))}" + turn_note(row)


def turn_note(row: dict) -> str:
    """A note under a chat example where one side speaks twice in a row. In persona dialogues (ConvAI2, LAPDOG's
    JSONL) that is a partner turn the file leaves empty (the partner said nothing, or the context ends on the
    persona's line): the example is shown, and trained, as written, and the note says why it reads oddly."""
    messages = row.get("messages") if isinstance(row.get("messages"), list) else []
    roles = [m.get("role") for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    twice = [n for n in range(1, len(roles)) if roles[n] == roles[n - 1]]
    if not twice:
        return ""
    n = twice[0]
    who = {"assistant": "the persona's (assistant)", "user": "the partner's (user)"}.get(roles[n], roles[n])
    more = f" (and {len(twice) - 1} more such place{'s' if len(twice) > 2 else ''})" if len(twice) > 1 else ""
    other = "partner" if roles[n] == "assistant" else "persona"
    return (f"\n\n*Turns {n} and {n + 1} are both {who}{more}: the {other}'s turn between them is empty in the "
            f"file (nothing said there), so the example reads, and trains, as two turns in a row.*")


def sample_prompts(data, tokenizer, n: int = 3) -> list[str]:
    """Prompts from this data's held-out rows (else its first rows) for the before/after samples of a run on it."""
    split = data.splits.get("test") or data.splits.get("validation") or data.splits["train"]
    prompts = []
    for row in split.select(range(min(len(split), 50))):
        if isinstance(row.get("prompt"), str):
            prompt = row["prompt"]
        elif isinstance(row.get("text"), str):  # a text column may hold numbers or dates (parquet, mixed JSON)
            words = row["text"].split()
            prompt = " ".join(words[:max(1, min(6, len(words) // 2))]) + " " if words else ""
        else:
            continue  # chat rows: the recipe's prompts stay (samples are plain continuations)
        if prompt.strip() and prompt not in prompts:
            prompts.append(prompt)
        if len(prompts) == n:
            break
    return prompts


# where "Use this dataset" can hand the data: the tab's id, and what the data is there
TARGETS = {"Train": ("train", "the dataset to train on"), "DPO": ("dpo", "the preference pairs to train on"),
           "Evaluate": ("evaluate", "the dataset whose test split is scored"),
           "Persona Chat": ("chat", "the story corpus the persona retrieves from")}


def fitting_tab(kind: str) -> str:
    """The tab a dataset of TRL kind `kind` fits: preference pairs train DPO, everything else trains on Train."""
    return "DPO" if kind == "preference" else "Train"


def handover_line(target: str, source: str, prompts: bool = False) -> str:
    """What "Use this dataset" says once the data is in the other tab's field."""
    line = f"{source} is now {TARGETS[target][1]} on the {target} tab"
    if target == "Train":
        line += (", with sample prompts from this data" if prompts else "") + "; it stays when you pick another recipe"
    return line + "."


def create_data_tab() -> dict:
    from studio.data import FORMATS, SAMPLES
    from studio.embedded import EMBEDDED_MODEL_ID

    with gr.Tab("Data", id="data") as data_tab:
        gr.Markdown("Load a dataset, check how the studio reads it, then use it on the tab it fits (**Train**; "
                    "**DPO** for preference pairs).")
        with gr.Row():
            with gr.Column(scale=1):
                kind = gr.Radio(SOURCES, value="Bundled sample", label="Source")
                sample = gr.Dropdown(list(SAMPLES), value="quotes", label="Bundled sample")
                upload = gr.File(label="Upload (jsonl, json, csv, parquet, txt)", type="filepath", visible=False,
                                 file_types=[".jsonl", ".json", ".csv", ".parquet", ".txt"])
                path = gr.Textbox(label="Local path", placeholder="/path/to/data.jsonl", visible=False)
                with gr.Group(visible=False) as hub_group:
                    hub_id = gr.Textbox(label="Hub dataset id", placeholder="owner/name")
                    with gr.Row():
                        hub_config = gr.Textbox(label="Config", placeholder="optional")
                        hub_split = gr.Textbox(label="Split", placeholder="train")
                fmt = gr.Dropdown(["auto", *FORMATS], value="auto", label="Format (auto-detected)")
                template = gr.Textbox(label="Template override", placeholder="e.g. Quote: {quote}\\nAuthor: {author}",
                                      lines=2)
                tokenizer_name = gr.Textbox(value=EMBEDDED_MODEL_ID, label="Tokenizer for length statistics")
                load = gr.Button("Load dataset", variant="primary")
            with gr.Column(scale=2):
                status = gr.HTML(elem_id="data-status")
                info = gr.Markdown(elem_id="data-info")
                hist = gr.Plot(label="Token lengths")
                with gr.Row():
                    target = gr.Radio(["Train"], value="Train", label="Use it on", scale=2, elem_id="data-target",
                                      info="the tab this data fits is picked when it loads")
                    use = gr.Button("Use this dataset on the Train tab", scale=1, elem_id="data-use")
        chosen = gr.State(None)

        def show(k):
            return (gr.update(visible=k == "Bundled sample"), gr.update(visible=k == "Upload"),
                    gr.update(visible=k == "Local path"), gr.update(visible=k == "Hub dataset"))

        kind.change(show, kind, [sample, upload, path, hub_group])
        fields = [kind, sample, upload, path, hub_id, hub_config, hub_split, fmt, template, tokenizer_name]
        load.click(inspect, fields, [status, info, hist, chosen], api_name="inspect_data")
        # A new file or sample is read at once; any other change empties the preview, so what is shown
        # (and what "Use this dataset" hands over) is always what the fields say.
        upload.upload(inspect, fields, [status, info, hist, chosen], api_name=False)
        sample.input(inspect, fields, [status, info, hist, chosen], api_name=False)
        for field in (kind, path, hub_id, hub_config, hub_split, fmt, template, tokenizer_name):
            field.change(stale, None, [status, info, hist, chosen], api_name=False)
        upload.clear(stale, None, [status, info, hist, chosen], api_name=False)

        def connect(train: dict, **others: dict) -> None:
            """Wire "Use this dataset" to the Train tab's fields and to each other tab that offers its data field
            (`others`: dpo=, evaluate=, chat=, each {"dataset": component}); the page then switches to that tab."""
            from studio.ui.common import shown_source

            tabs = data_tab.parent  # the app's gr.Tabs: selecting a tab id switches the page to it
            wired = {"Train": None, **{name: (others.get(TARGETS[name][0]) or {}).get("dataset") for name in TARGETS
                                       if name != "Train"}}
            wired = {name: field for name, field in wired.items() if name == "Train" or field is not None}
            fields = [f for f in wired.values() if f is not None]

            def offer(choice):
                """Once data is loaded: the tabs it can go to, the one it fits picked."""
                if not choice:
                    return gr.update(), gr.update()
                fits = fitting_tab(choice.get("kind", ""))
                pick = fits if fits in wired else "Train"
                return (gr.update(choices=list(wired), value=pick,
                                  info=f"this data fits the {fits} tab" + ("" if fits in wired else
                                                                          " (not offered on this page)")),
                        gr.update(value=f"Use this dataset on the {pick} tab"))

            def relabel(where):
                return gr.update(value=f"Use this dataset on the {where or 'Train'} tab")

            def send(choice, where, client_id=None):
                from studio.ui.common import keep_handover

                keep = [gr.update() for _ in fields]
                if not choice:
                    return (gr.update(),) * 4 + (error_html("Load a dataset first."), gr.update(), *keep, gr.update())
                where = where if where in wired else "Train"
                name = shown_source(choice["source"])
                switch = gr.Tabs(selected=TARGETS[where][0])
                if where != "Train":
                    out = [name if field is wired[where] else gr.update() for field in fields]
                    return (gr.update(),) * 4 + (ok_html(handover_line(where, name)), gr.update(), *out, switch)
                prompts = choice.get("prompts") or []
                keep_handover(client_id, choice)  # a reload of the page gets it back (train_tab's on_load)
                return (name, choice["format"], choice["template"] or "", "\n".join(prompts) if prompts else gr.update(),
                        ok_html(handover_line("Train", name, bool(prompts))), choice, *keep, switch)

            chosen.change(offer, chosen, [target, use], api_name=False)
            target.change(relabel, target, use, api_name=False)
            use.click(send, [chosen, target, train["client"]], [train["dataset_source"], train["dataset_format"],
                                               train["dataset_template"], train["eval_prompts"], status,
                                               train["handed"], *fields, tabs],
                      api_name=False)  # the page's own wiring (it fills other tabs' fields): nothing for API clients

        return {"connect": connect}
