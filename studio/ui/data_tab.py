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
            + ", ".join(f"{k} {v}" for k, v in s["splits"].items()) + f" · {data.split_line()}")
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
                                                               "template": template or None,
                                                               "prompts": sample_prompts(data, tok)}


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
    return f"**Example {i + 1}**\n{_fence(render_example(row, tokenizer))}"


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


def create_data_tab() -> dict:
    from studio.data import FORMATS, SAMPLES
    from studio.embedded import EMBEDDED_MODEL_ID

    with gr.Tab("Data", id="data"):
        gr.Markdown("Load a dataset, check how the studio reads it, then use it on the **Train** tab.")
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
                use = gr.Button("Use this dataset on the Train tab")
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

        def send(choice):
            if not choice:
                return gr.update(), gr.update(), gr.update(), gr.update(), error_html("Load a dataset first."), gr.update()
            prompts = choice.get("prompts") or []
            return (shown_source(choice["source"]), choice["format"], choice["template"] or "",
                    "\n".join(prompts) if prompts else gr.update(),
                    ok_html("Dataset set on the Train tab" + (", with sample prompts from this data" if prompts else "")
                            + "; it stays when you pick another recipe there."), choice)

        def connect(train: dict) -> None:
            """Wire 'use this dataset' to the Train tab's fields (built after this tab)."""
            use.click(send, chosen, [train["dataset_source"], train["dataset_format"], train["dataset_template"],
                                     train["eval_prompts"], status, train["handed"]])

        return {"connect": connect}
