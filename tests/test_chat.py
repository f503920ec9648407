"""Persona chat: prompt budgeting, the retriever's query, and the `chat` CLI's JSON."""

import json

import pytest

from studio.errors import StudioError
from studio.persona import persona_messages, query_text

PERSONA = "i love to ski. i have a dog named biscuit."


@pytest.fixture(scope="module")
def tokenizer(embedded_path):
    from studio.models import load_tokenizer

    return load_tokenizer("embedded/tiny-llama")


def _tokens(tok, messages):
    from studio.inference import chat_prompt

    return len(tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"])


def test_budget_cuts_stories_first_then_oldest_turns_never_the_persona(tokenizer):
    stories = [{"id": str(i), "title": f"story {i}", "text": "i went skiing in the alps with my brother. " * 6}
               for i in range(4)]
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"question number {i} about your winter holidays?"},
                    {"role": "assistant", "content": f"answer number {i}: i was on the slopes all day."}]
    history.append({"role": "user", "content": "and what about your dog?"})

    full, kept, dropped = persona_messages(tokenizer, PERSONA, stories, history, budget=10_000)
    assert len(kept) == 4 and dropped == 0
    size = _tokens(tokenizer, full)

    # a little less room: only stories go, the least relevant (last) first
    messages, kept, dropped = persona_messages(tokenizer, PERSONA, stories, history, budget=size - 20)
    assert [s["id"] for s in kept] == ["0", "1", "2"] and dropped == 0

    # much less room: no stories, and the oldest turns go; the persona and the last message stay
    no_stories = _tokens(tokenizer, persona_messages(tokenizer, PERSONA, [], history)[0])
    messages, kept, dropped = persona_messages(tokenizer, PERSONA, stories, history, budget=no_stories - 30)
    assert kept == [] and dropped > 0
    assert messages[0]["role"] == "system" and PERSONA in messages[0]["content"]
    assert messages[-1]["content"] == "and what about your dog?"
    assert messages[1:] == history[dropped:]
    assert _tokens(tokenizer, messages) <= no_stories - 30


def test_persona_longer_than_the_context_is_one_line(tokenizer):
    with pytest.raises(StudioError, match="shorten the persona"):
        persona_messages(tokenizer, "i like long walks. " * 200, [], [{"role": "user", "content": "hi"}], budget=64)
    with pytest.raises(StudioError, match="the persona is empty"):
        persona_messages(tokenizer, "  ", [], [{"role": "user", "content": "hi"}], budget=64)


def test_query_is_the_persona_or_persona_plus_last_user_turn():
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
               {"role": "user", "content": "any pets?"}]
    assert query_text(PERSONA, history) == PERSONA
    assert query_text(PERSONA, history, with_turn=True) == PERSONA + " any pets?"


def test_chat_cli_prints_one_json_line_with_stories_best_first(capsys, embedded_path):
    from studio.cli import main

    code = main(["chat", "--model", "embedded/tiny-llama", "--persona", PERSONA, "--message",
                 "what do you do in winter?", "--k", "3", "--json", "--max-new-tokens", "12"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1
    result = json.loads(out[0])
    assert isinstance(result["reply"], str) and result["reply"]
    assert len(result["stories"]) == 3
    assert all(set(s) == {"id", "text", "score"} for s in result["stories"])
    scores = [s["score"] for s in result["stories"]]
    assert scores == sorted(scores, reverse=True)

    code = main(["chat", "--model", "embedded/tiny-llama", "--persona", PERSONA, "--message", "hi", "--k", "100000",
                 "--json"])
    assert code == 2 and "larger than the story corpus" in json.loads(capsys.readouterr().out)["error"]


def test_a_reply_stopped_by_the_token_limit_is_marked_and_goes_back_unmarked(embedded_path):
    """Both backends (CI runs this file again with STUDIO_CHAT_BACKEND=transformers) say when a reply was cut."""
    from studio.chat import clean_history, load_setup, stream_reply
    from studio.inference import EMPTY_REPLY, marked_reply

    setup = load_setup("embedded/tiny-llama", retrieval=False)
    history = [{"role": "user", "content": "what do you do in winter?"}]
    short, long = {}, {}
    cut_text = [t for t, _ in stream_reply(setup, PERSONA, history, 0, max_new_tokens=3, seed=7, info=short)][-1]
    assert short == {"tokens": 3, "cut": True}
    whole = [t for t, _ in stream_reply(setup, PERSONA, history, 0, max_new_tokens=200, seed=7, info=long)][-1]
    assert long["cut"] is (long["tokens"] >= 200)
    assert whole.startswith(cut_text.rstrip())  # the same seed: the cut reply is the start of the longer one

    shown = marked_reply(cut_text, short["cut"], 3)
    assert shown.endswith(" … [stopped at the 3-token limit]")
    assert marked_reply("  ", False, 3) == EMPTY_REPLY
    # the next turn's prompt gets the model's own words, not the page's marks
    again = clean_history([*history, {"role": "assistant", "content": shown}, {"role": "user", "content": "and?"},
                           {"role": "assistant", "content": EMPTY_REPLY}])
    assert again[1]["content"] == cut_text.rstrip() and again[3]["content"] == ""


def test_a_seed_repeats_a_reply_and_a_bad_one_is_one_line():
    from studio.chat import check_sampling

    assert check_sampling(seed=42.0) == {"seed": 42}
    for bad, word in ((-1, "must be from"), (2**31, "must be from"), ("x", "expected a number")):
        with pytest.raises(StudioError, match=f"seed: {word}"):
            check_sampling(seed=bad)
