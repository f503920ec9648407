"""Issue 34 ("A newcomer's third afternoon"), item 12's smaller findings: each is read the way the page shows it."""

import json

from conftest import ROOT


def test_a_persona_dialogue_with_two_persona_turns_in_a_row_says_why(tmp_path):
    """LAPDOG's JSONL whose context ends on the persona's line: the preview shows two assistant turns in a row,
    and says the partner's turn between them is empty in the file."""
    from studio.ui.data_tab import inspect

    rows = [{"question": f"persona: i love to ski. i have {n} cats. context: Q: hi there R: hello, how are you? "
                         f"Q: fine. do you ski? R: every winter.",
             "answers": [f"my {n} cats stay home when i ski."]} for n in range(12)]
    path = tmp_path / "lapdog.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    status, info, _, chosen = inspect("Local path", None, None, str(path), "", "", "", "auto", "", "")
    assert "Loaded" in status and chosen["format"] == "persona"
    example = info.split("**Example 1**")[1].split("**Example 2**")[0]
    assert "assistant: every winter.\nassistant: my " in example  # as written, as it trains
    assert ("*Turns 4 and 5 are both the persona's (assistant): the partner's turn between them is empty in the "
            "file (nothing said there), so the example reads, and trains, as two turns in a row.*") in example
    # a dialogue that alternates gets no note
    status, info, _, _ = inspect("Bundled sample", "personas", None, "", "", "", "", "auto", "", "")
    assert "Loaded" in status and "Turns " not in info


def test_the_data_tab_says_its_splits_are_not_the_runs():
    from studio.ui.data_tab import inspect

    status, info, _, _ = inspect("Bundled sample", "personas", None, "", "", "", "", "auto", "", "")
    assert "Loaded" in status
    assert "Splits here are 80/10/10 (train/validation/test); a run splits by its recipe's `dataset.splits` " in info
    assert "the run log's `data:` line gives them" in info


def test_use_this_dataset_offers_the_tab_the_data_fits():
    from studio.ui.data_tab import fitting_tab, handover_line, inspect

    assert fitting_tab("preference") == "DPO"
    assert fitting_tab("messages") == fitting_tab("text") == fitting_tab("prompt_completion") == "Train"
    _, _, _, chosen = inspect("Bundled sample", "pairs", None, "", "", "", "", "auto", "", "")
    assert chosen["kind"] == "preference" and fitting_tab(chosen["kind"]) == "DPO"
    _, _, _, chosen = inspect("Bundled sample", "quotes", None, "", "", "", "", "auto", "", "")
    assert fitting_tab(chosen["kind"]) == "Train"
    assert handover_line("DPO", "upload: pairs.jsonl") == ("upload: pairs.jsonl is now the preference pairs to "
                                                          "train on on the DPO tab.")
    assert handover_line("Train", "quotes", prompts=True).endswith(
        "with sample prompts from this data; it stays when you pick another recipe.")


def test_the_model_cache_line_is_folded_under_its_total():
    from studio.ui.chat_tab import cache_html

    folded = cache_html("model cache: 812 of 6,144 MB: SmolLM2 (model, 513 MB), all-MiniLM-L6-v2 (retriever, 87 MB)")
    assert folded.startswith('<details id="chat-cache"><summary>model cache: 812 of 6,144 MB in use: what it holds'
                             '</summary>')
    assert "all-MiniLM-L6-v2 (retriever, 87 MB)</details>" in folded
    assert cache_html("model cache: empty (limit 6,144 MB, STUDIO_MODEL_CACHE_MB)") == (
        '<div id="chat-cache">model cache: empty (limit 6,144 MB, STUDIO_MODEL_CACHE_MB)</div>')


def test_colab_token_cell_says_a_shared_app_drops_the_owners_token():
    nb = json.loads((ROOT / "assets" / "colab.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if "userdata.get(\"HF_TOKEN\")" in "".join(c["source"]))
    flat = " ".join(line.lstrip("# ") for line in cell.splitlines())
    assert "a shared app drops the owner's HF_TOKEN by design" in flat and "docs/security.md" in flat
    assert "needs a local (non-shared) app" in flat and "python -m studio export RUN --merge --push" in flat
    launch = next("".join(c["source"]) for c in nb["cells"] if "app.py --share" in "".join(c["source"]))
    assert "--share" in launch  # the reason the cell above says so
