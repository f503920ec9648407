"""Export tab: a finished run → adapter / merged / GGUF with model cards, a zip download, a push to the Hub."""

from __future__ import annotations

import html
import os

import gradio as gr

from studio.runs import adapter_runs
from studio.ui.common import error_html, ok_html, safely
import studio.ui.heavy  # noqa: F401 - the page heavy work asks (studio.work): is it still there

PARTS = ["adapter", "merged", "gguf"]


def push_defaults(run: str) -> tuple[str, bool]:
    """(repo id, private) from the run's recipe `export:` header, when it has one."""
    from studio.access import resolve_run
    from studio.export import run_recipe

    export = run_recipe(resolve_run(run)).get("export") or {}
    return str(export.get("hub_model_id") or ""), bool(export.get("private", False))


def result_html(result) -> str:
    from studio.export import size_text

    rows = "".join(f"<li><b>{html.escape(name)}/</b> — {size_text(path)}</li>" for name, path in result.parts.items())
    checks = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in result.checks.items())
    notes = "".join(f'<p class="studio-note">{html.escape(n)}</p>' for n in result.notes)
    return (f'<div class="studio-ok" id="export-done">Exported <b>{html.escape(result.run)}</b> into the run\'s '
            f"export folder:<ul>{rows}</ul>"
            + (f"Each part loaded back (adapter/merged with plain transformers / PEFT, GGUF with llama.cpp when "
               f"installed):<ul>{checks}</ul>" if checks else "")
            + f"{notes}</div>")


def cards_html(parts: list[str], evals: list[str]) -> str:
    """What Update cards did: which cards it rewrote and which evaluations they now carry."""
    carried = (f"with the run's {len(evals)} evaluation{'s' if len(evals) != 1 else ''} "
               f"({', '.join(evals)})" if evals else
               "(the run has no saved evaluation yet: evaluate it on the Evaluate tab, then update again)")
    return ok_html(f"Rewrote the model card of {', '.join(f'{p}/' for p in parts)} {carried}; "
                   "push again to publish them.")


def gguf_choices() -> list[str]:
    """The GGUF types this machine can make: K-quants only where llama.cpp's quantizer is installed."""
    from studio.gguf_export import DIRECT_TYPES, LLAMA_CPP_TYPES, llama_cpp_version

    return list(DIRECT_TYPES) + (list(LLAMA_CPP_TYPES) if llama_cpp_version() else [])


def gguf_info() -> str:
    from studio.gguf_export import llama_cpp_version

    if llama_cpp_version():
        return "each file is loaded by llama.cpp and checked against the merged model (ids + greedy tokens)"
    return ("llama-cpp-python is not installed: q4_k_m / q5_k_m need its quantizer, and the check falls back to "
            "transformers' GGUF loader")


def _sign_in_note() -> str:
    from studio.access import demo_mode

    if os.environ.get("SPACE_ID"):
        return ("Pushes use your own Hugging Face sign-in (button above)" +
                ("; on this demo nothing else is accepted." if demo_mode() else ", or a token typed here."))
    return ("Token order: a token typed here (this push only: never stored, logged or shown again), "
            "then `HF_TOKEN`, then the cached `hf auth login`.")


def create_export_tab(client: gr.BrowserState) -> dict:
    from studio.access import demo_mode

    with gr.Tab("Export", id="export") as tab:
        if os.environ.get("SPACE_ID"):  # off a Space the button mounts mock OAuth routes that fail (stack.md)
            gr.LoginButton()
        gr.Markdown("Export a finished run as its **LoRA adapter**, a **merged** standalone model, or **GGUF** for "
                    "llama.cpp and Ollama (Llama/SmolLM2, Mistral, Qwen2, Gemma-2/3, GPT-2), each with a model card; "
                    "download it as a zip or push it to the Hugging Face Hub. Everything is written under "
                    "`runs/<run>/export/` and checked by loading it back and comparing greedy output (GGUF: in "
                    "llama.cpp, against the merged model).")
        with gr.Row():
            run = gr.Dropdown(label="Run", choices=[], allow_custom_value=True, scale=4, elem_id="export-run")
            refresh = gr.Button("↻ Refresh runs", scale=1)
        with gr.Row():
            parts = gr.CheckboxGroup(["adapter", "merged"], value=["adapter", "merged"], label="Export",
                                     info="merged: merge_and_unload into the base's 16-bit dtype (fp32 on CPU)")
            gguf = gr.CheckboxGroup(gguf_choices(), value=[], label="GGUF (+ Ollama Modelfile)",
                                    info=gguf_info())
            check = gr.Checkbox(value=True, label="Check: load each part back and compare greedy output")
        with gr.Row():
            export_btn = gr.Button("Export", variant="primary", scale=3)
            cards_btn = gr.Button("Update cards", scale=1, elem_id="export-update-cards")
        gr.Markdown("Evaluated the run after exporting it? **Update cards** rewrites the card of every part already "
                    "exported (adapter, merged, GGUF) with the run's evaluations, without exporting again.",
                    elem_classes="studio-note")
        export_msg = gr.HTML(elem_id="export-message")
        with gr.Row():
            download = gr.File(label="Download (zip)", interactive=False, elem_id="export-download")
            card = gr.Code(label="Model card (README.md of the first part)", language="markdown", lines=16,
                           max_lines=24, interactive=False, elem_id="export-card")

        gr.Markdown("### Push to the Hub")
        with gr.Row():
            repo = gr.Textbox(label="Repo id", placeholder="your-name/my-model", scale=3, elem_id="export-repo")
            private = gr.Checkbox(label="Private", value=False, scale=1)
            push_parts = gr.CheckboxGroup(PARTS, value=["adapter"], label="Push", scale=2,
                                          info="several: merged (or adapter) at the root, the rest in sub-folders")
        message = gr.Textbox(label="Commit message", placeholder="Upload from LoRA Studio")
        token = gr.Textbox(label="Hugging Face write token (this push only)", type="password",
                           placeholder="hf_…", visible=not demo_mode(), elem_id="export-token")
        gr.Markdown(_sign_in_note(), elem_classes="studio-note")
        push_btn = gr.Button("Push to the Hub")
        push_msg = gr.HTML(elem_id="push-message")

        def refresh_runs(current):
            # "none yet" is the list's own note: it goes when the list fills (opening the tab, Refresh),
            # and the message box below keeps what an export said
            names, err = safely(adapter_runs)
            if err:
                return gr.update(choices=[]), error_html(err)
            value = current if current in names else (names[0] if names else None)
            return gr.update(choices=names, value=value, info="" if names else NO_RUNS), gr.update()

        def pick(run_id):
            if not run_id:
                return gr.update(), gr.update()
            found, _err = safely(push_defaults, run_id)
            repo_id, is_private = found or ("", False)
            return gr.update(value=repo_id) if repo_id else gr.update(), is_private

        def do_export(run_id, chosen, gguf_types, do_check, profile: gr.OAuthProfile | None,
                      progress=gr.Progress()):
            from studio.access import require_work
            from studio.export import export_run, zip_export

            steps = iter([0.05, 0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])

            def run():
                require_work(profile, "export")
                if not run_id:
                    raise_missing()
                result = export_run(run_id, adapter="adapter" in chosen, merge="merged" in chosen,
                                    gguf=gguf_types, check=do_check,
                                    log=lambda line: progress(next(steps, 0.95), desc=line))
                return result, zip_export(result)

            found, err = safely(run)
            if err:
                return error_html(err), None, ""
            result, zipped = found
            first = next(iter(result.parts.values()))
            return result_html(result), str(zipped), (first / "README.md").read_text("utf-8")

        def do_update_cards(run_id, profile: gr.OAuthProfile | None):
            from studio.access import require_work, resolve_run
            from studio.export import card_evaluations, default_out, update_cards

            def run():
                require_work(profile, "export")
                if not run_id:
                    raise_missing()
                return update_cards(run_id), card_evaluations(run_id), default_out(resolve_run(run_id))

            found, err = safely(run)
            if err:
                return error_html(err), gr.update()
            parts, evals, out = found
            return cards_html(parts, evals), (out / parts[0] / "README.md").read_text("utf-8")

        def do_push(run_id, chosen, repo_id, is_private, msg, typed, oauth: gr.OAuthToken | None,
                    profile: gr.OAuthProfile | None, progress=gr.Progress()):
            from studio.access import require_work, resolve_run
            from studio.export import default_out
            from studio.hub import push, resolve_token

            def run():
                require_work(profile, "pushing to the Hub")
                if not run_id:
                    raise_missing()
                out = default_out(resolve_run(run_id))
                missing = [p for p in chosen if not (out / p).is_dir()]
                if missing:
                    from studio.errors import StudioError

                    raise StudioError(f"export {', '.join(missing)} first (press Export with it ticked)")
                tok = resolve_token(oauth, typed, from_page=True)
                return push({p: out / p for p in chosen}, repo_id, tok, private=is_private, message=msg or None,
                            progress=lambda line: progress(None, desc=line))

            url, err = safely(run)
            if err:
                return error_html(err)
            return ok_html(f"Pushed {', '.join(chosen)} to {repo_id} ({'private' if is_private else 'public'}): {url}")

        refresh.click(refresh_runs, run, [run, export_msg], api_name=False)
        # opening the tab lists runs finished since the page loaded (the message below is left as it is)
        tab.select(lambda current: refresh_runs(current)[0], run, run, api_name=False)
        run.change(pick, run, [repo, private], api_name=False)
        export_btn.click(do_export, [run, parts, gguf, check], [export_msg, download, card], api_name="export_run",
                         show_progress_on=[export_msg])
        cards_btn.click(do_update_cards, run, [export_msg, card], api_name="update_cards",
                        show_progress_on=[export_msg])
        push_btn.click(do_push, [run, push_parts, repo, private, message, token], push_msg, api_name="push_run",
                       show_progress_on=[push_msg])
    return {"on_load": [(refresh_runs, run, [run, export_msg])]}


NO_RUNS = "No finished runs yet: train one in the Train tab; this list fills when you come back."


def raise_missing():
    from studio.errors import StudioError

    raise StudioError("no run chosen: pick a finished run (↻ Refresh runs after training)")
