"""The Gradio app: one module per tab; handlers are thin calls into the backend."""

from __future__ import annotations

import gradio as gr

from studio.ui.common import CSS
from studio.ui.data_tab import create_data_tab
from studio.ui.train_tab import create_train_tab

# Tabs whose capability is still being built say so; they carry no buttons.
COMING = {
    "DPO": "Align a tuned model with **Direct Preference Optimization** on prompt / chosen / rejected pairs "
           "(the DialoGPT-small DPO recipe). Preference data already loads and previews on the **Data** tab.",
    "Persona Chat": "Chat with a **persona bot** whose replies are grounded in retrieved first-person stories "
                    "(LAPDOG: retriever and generator trained jointly). ConvAI2 persona data already loads on the "
                    "**Data** tab.",
    "Evaluate": "Compare **base vs tuned** models side by side with ROUGE, BLEU, F1 and perplexity. "
                "Until then, every finished run shows before/after generations on its recipe's prompts.",
    "Export": "Save adapters or merged models and **push them to the Hugging Face Hub** with a model card. "
              "Until then, each run's PEFT adapter is in `runs/<run>/adapter/`.",
}


def build_app() -> gr.Blocks:
    with gr.Blocks(title="LoRA Studio", analytics_enabled=False) as demo:
        gr.Markdown("# LoRA Studio\nFine-tune small language models with LoRA / QLoRA — "
                    "pick a recipe, watch it train, compare before and after.")
        # Top level, not inside a tab: tabs mount lazily, and the id must be read before any tab is shown.
        client = gr.BrowserState(None, storage_key="lora-studio-client")
        with gr.Tabs():
            data = create_data_tab()
            train = create_train_tab(client)
            for name, text in COMING.items():
                with gr.Tab(name):
                    gr.Markdown(f"### Coming next\n{text}")
        data["connect"](train)
        demo.load(*train["on_load"])
        demo.load(*train["run_history"])
    return demo


def launch_kwargs() -> dict:
    return {"css": CSS, "theme": gr.themes.Soft(primary_hue="orange")}
