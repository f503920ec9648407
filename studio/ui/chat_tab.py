"""Persona Chat tab (being built)."""

from __future__ import annotations

import gradio as gr


def create_chat_tab(client: gr.BrowserState) -> dict:
    with gr.Tab("Persona Chat", id="chat"):
        gr.Markdown("### Coming next\n" + 'Chat with a **persona bot** whose replies are grounded in retrieved first-person stories (LAPDOG: retriever and generator trained jointly). ConvAI2 persona data already loads on the **Data** tab.')
    return {}
