"""The Gradio app: one module per tab; handlers are thin calls into the backend."""

from __future__ import annotations

import gradio as gr

from studio.ui.chat_tab import create_chat_tab
from studio.ui.common import CSS
from studio.ui.data_tab import create_data_tab
from studio.ui.dpo_tab import create_dpo_tab
from studio.ui.evaluate_tab import create_evaluate_tab
from studio.ui.export_tab import create_export_tab
from studio.ui.train_tab import create_train_tab


def build_app() -> gr.Blocks:
    from studio.access import set_visitor_source, shared_mode, upload_dirs
    from studio.budgets import cache_schedule, start_sweeper
    from studio.ui.common import event_visitor, plain_input_errors

    set_visitor_source(event_visitor)  # studio.access asks who the current event's visitor is
    if shared_mode():  # uploads (visitors' copies, and Gradio's own files) leave after the upload TTL (budgets)
        start_sweeper(upload_dirs()[0])
    with gr.Blocks(title="LoRA Studio", analytics_enabled=False,
                   delete_cache=cache_schedule() if shared_mode() else None) as demo:
        gr.Markdown("# LoRA Studio\nFine-tune small language models with LoRA / QLoRA — "
                    "pick a recipe, watch it train, compare before and after.")
        # Top level, not inside a tab: tabs mount lazily, and the id must be read before any tab is shown.
        client = gr.BrowserState(None, storage_key="lora-studio-client")
        with gr.Tabs():
            data = create_data_tab()
            train = create_train_tab(client)
            dpo = create_dpo_tab(client)
            chat = create_chat_tab(client)
            evaluate = create_evaluate_tab(client)
            export = create_export_tab(client)
        data["connect"](train)
        demo.load(*train["on_load"])
        demo.load(*train["run_history"])
        for tab in (dpo, chat, evaluate, export):  # each tab may ask for page-load events: (fn, inputs, outputs)
            for event in tab.get("on_load", []):
                demo.load(*event)
    for block in demo.blocks.values():
        if isinstance(block, gr.components.Component) and not isinstance(block, (gr.State, gr.BrowserState)):
            plain_input_errors(block)
    return demo


def launch_kwargs() -> dict:
    return {"css": CSS, "theme": gr.themes.Soft(primary_hue="orange")}
