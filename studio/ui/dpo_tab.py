"""DPO tab (being built)."""

from __future__ import annotations

import gradio as gr


def create_dpo_tab(client: gr.BrowserState) -> dict:
    with gr.Tab("DPO", id="dpo"):
        gr.Markdown("### Coming next\n" + 'Align a tuned model with **Direct Preference Optimization** on prompt / chosen / rejected pairs (the DialoGPT-small DPO recipe). Preference data already loads and previews on the **Data** tab.')
    return {}
