"""Evaluate tab (being built)."""

from __future__ import annotations

import gradio as gr


def create_evaluate_tab(client: gr.BrowserState) -> dict:
    with gr.Tab("Evaluate", id="evaluate"):
        gr.Markdown("### Coming next\n" + "Compare **base vs tuned** models side by side with ROUGE, BLEU, F1 and perplexity. Until then, every finished run shows before/after generations on its recipe's prompts.")
    return {}
