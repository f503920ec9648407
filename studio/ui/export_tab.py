"""Export tab (being built)."""

from __future__ import annotations

import gradio as gr


def create_export_tab(client: gr.BrowserState) -> dict:
    with gr.Tab("Export", id="export"):
        gr.Markdown("### Coming next\n" + "Save adapters or merged models and **push them to the Hugging Face Hub** with a model card. Until then, each run's PEFT adapter is in `runs/<run>/adapter/`.")
    return {}
