import json

import pytest

from studio.data import parse_splits, prepare_dataset
from studio.errors import StudioError

FORMAT_CASES = {
    "text": [{"text": "hello world"}, {"text": "second line"}],
    "quotes": [{"quote": "“Be yourself.”", "author": "Oscar Wilde"}],
    "dolly": [{"instruction": "Name a colour", "context": "", "response": "Blue", "category": "open_qa"}],
    "alpaca": [{"instruction": "Add", "input": "2 and 2", "output": "4"}],
    "prompt_completion": [{"prompt": "2+2=", "completion": "4"}],
    "chat": [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}],
    "e2e": [{"mr": "name[The Eagle], food[French]", "ref": "The Eagle serves French food."}],
    "preference": [{"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away."}],
}
EXPECTED_KIND = {"text": "text", "quotes": "text", "dolly": "prompt_completion", "alpaca": "prompt_completion",
                 "prompt_completion": "prompt_completion", "chat": "messages", "e2e": "prompt_completion",
                 "preference": "preference"}


@pytest.mark.parametrize("name", list(FORMAT_CASES))
def test_detects_each_format(write, name):
    path = write(f"{name}.jsonl", FORMAT_CASES[name])
    data = prepare_dataset(str(path))
    assert data.format.name == name
    assert data.format.kind == EXPECTED_KIND[name]
    assert set(data.splits["train"].column_names) == {
        "text": {"text"}, "prompt_completion": {"prompt", "completion"}, "messages": {"messages"},
        "preference": {"prompt", "chosen", "rejected"}}[data.format.kind]


def test_quotes_template_matches_notebook(write):
    data = prepare_dataset(str(write("q.jsonl", FORMAT_CASES["quotes"])))
    assert data.example == "Quote: “Be yourself.”\nAuthor: Oscar Wilde"


def test_dolly_template_skips_empty_context_and_keeps_it_when_present(write):
    rows = [{"instruction": "Summarise", "context": "Long text.", "response": "Short."},
            {"instruction": "Name a colour", "context": "", "response": "Blue"}]
    data = prepare_dataset(str(write("d.jsonl", rows)))
    prompts = sorted(data.splits["train"]["prompt"])
    assert prompts[0] == "### Instruction:\nName a colour\n\n### Response:\n"
    assert prompts[1] == "### Instruction:\nSummarise\n\n### Context:\nLong text.\n\n### Response:\n"


def test_alpaca_input_becomes_context(write):
    data = prepare_dataset(str(write("a.jsonl", FORMAT_CASES["alpaca"])))
    assert data.splits["train"][0] == {"prompt": "### Instruction:\nAdd\n\n### Context:\n2 and 2\n\n### Response:\n",
                                       "completion": "4"}


def test_sharegpt_roles_are_mapped(write):
    rows = [{"conversations": [{"from": "system", "value": "be nice"}, {"from": "human", "value": "hi"},
                               {"from": "gpt", "value": "hello"}]}]
    data = prepare_dataset(str(write("s.jsonl", rows)))
    assert data.format.name == "chat"
    assert [m["role"] for m in data.splits["train"][0]["messages"]] == ["system", "user", "assistant"]


def test_chat_content_blocks_are_flattened(write):
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                          {"role": "assistant", "content": "hello"}]}]
    data = prepare_dataset(str(write("b.jsonl", rows)))
    assert data.splits["train"][0]["messages"][0]["content"] == "hi there"


def test_convai2_text_format(write):
    text = ("1 your persona: i like to ski.\n2 your persona: my dog is named biscuit.\n"
            "3 hi , how are you ?\ti am great , just back from skiing .\t\tno|yes|i am great , just back from skiing .\n"
            "4 do you have pets ?\tyes , a dog named biscuit .\t\tno|yes , a dog named biscuit .\n"
            "1 your persona: i am a nurse.\n2 hello !\thi , i just finished a shift at the hospital .\n")
    data = prepare_dataset(str(write("convai2.txt", text)))
    assert data.format.name == "persona" and data.rows == 3
    msgs = {len(r["messages"]): r["messages"] for r in data.splits["train"]}
    longest = msgs[max(msgs)]
    assert longest[0] == {"role": "system", "content": "Your persona: i like to ski. my dog is named biscuit."}
    assert [m["role"] for m in longest] == ["system", "user", "assistant", "user", "assistant"]
    assert longest[-1]["content"] == "yes , a dog named biscuit ."


def test_lapdog_jsonl_persona_format(write):
    rows = [{"question": "persona: i like to ski. my dog is named biscuit. context: Q: hi there R: hello ! Q: any pets ?",
             "answers": ["yes , a dog named biscuit ."]}]
    data = prepare_dataset(str(write("p.jsonl", rows)))
    assert data.format.name == "persona"
    m = data.splits["train"][0]["messages"]
    assert m[0]["content"] == "Your persona: i like to ski. my dog is named biscuit."
    assert [(x["role"], x["content"]) for x in m[1:]] == [
        ("user", "hi there"), ("assistant", "hello !"), ("user", "any pets ?"), ("assistant", "yes , a dog named biscuit .")]


def test_preference_implicit_prompt_hh_style(write):
    rows = [{"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."}]
    data = prepare_dataset(str(write("hh.jsonl", rows)))
    assert data.splits["train"][0] == {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "chosen": " 4.", "rejected": " 5."}


def test_preference_message_lists_with_implicit_prompt(write):
    user = {"role": "user", "content": "hi"}
    rows = [{"chosen": [user, {"role": "assistant", "content": "hello!"}],
             "rejected": [user, {"role": "assistant", "content": "what?"}]}]
    row = prepare_dataset(str(write("pm.jsonl", rows))).splits["train"][0]
    assert row["prompt"] == [user] and row["chosen"][0]["content"] == "hello!" and row["rejected"][0]["content"] == "what?"


@pytest.mark.parametrize("suffix", ["csv", "json", "parquet"])
def test_other_file_types(tmp_path, suffix):
    import pandas as pd

    df = pd.DataFrame({"prompt": ["a", "b"], "completion": ["x", "y"]})
    path = tmp_path / f"d.{suffix}"
    {"csv": lambda: df.to_csv(path, index=False), "json": lambda: df.to_json(path, orient="records"),
     "parquet": lambda: df.to_parquet(path)}[suffix]()
    data = prepare_dataset(str(path))
    assert data.format.name == "prompt_completion" and data.rows == 2


def test_txt_is_one_text_per_line(write):
    data = prepare_dataset(str(write("t.txt", "first line\n\nsecond line\n")))
    assert data.format.name == "text" and data.rows == 2


def test_local_dataset_folder_goes_through_load_dataset(tmp_path):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": f"line {i}"}) for i in range(12)))
    data = prepare_dataset(str(folder))
    assert data.rows == 12 and data.format.name == "text"


def test_drops_empty_targets_and_says_how_many(write):
    rows = [{"instruction": "a", "response": "b"}, {"instruction": "c", "response": ""}, {"instruction": "d", "response": "  "}]
    data = prepare_dataset(str(write("d.jsonl", rows)))
    assert data.rows == 1 and data.dropped == {"empty target": 2}


def test_splits_are_80_10_10_and_seeded(write):
    path = write("t.jsonl", [{"text": f"row {i}"} for i in range(100)])
    a = prepare_dataset(str(path), seed=1)
    b = prepare_dataset(str(path), seed=1)
    c = prepare_dataset(str(path), seed=2)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 80, "validation": 10, "test": 10}
    assert a.splits["test"]["text"] == b.splits["test"]["text"] != c.splits["test"]["text"]
    assert parse_splits("90/10") == pytest.approx((0.9, 0.1, 0.0))


def test_format_and_template_override(write):
    rows = [{"q": "What is 2+2?", "a": "4"}]
    with pytest.raises(StudioError, match=r"no column looks like a prompt.*\[q, a\]"):
        prepare_dataset(str(write("qa.jsonl", rows)))
    # question/answer (GSM8K's layout) is a prompt with its reference: the reward format, as prompt/completion
    data = prepare_dataset(str(write("gsm.jsonl", [{"question": "What is 2+2?", "answer": "4"}])))
    assert data.format.name == "reward" and data.format.kind == "prompt_completion"
    rows = [{"text": "ignored", "topic": "cats"}]
    data = prepare_dataset(str(write("t.jsonl", rows)), format="text", template="Topic: {topic}\n{text}")
    assert data.example == "Topic: cats\nignored"


def test_token_lengths_and_max_length_filter(write, embedded_path):
    from studio.models import load_tokenizer

    tok = load_tokenizer("embedded/tiny-llama")
    rows = [{"text": "short"}, {"text": "word " * 200}]
    data = prepare_dataset(str(write("t.jsonl", rows)), tokenizer=tok, max_length=50)
    assert data.rows == 1 and data.dropped == {"longer than 50 tokens": 1}
    assert data.lengths and data.lengths[0] < 50


ERRORS = [
    ("bad.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', r"bad\.jsonl line 3: malformed JSON"),
    ("cols.jsonl", [{"alpha": 1, "beta": 2}], r"cols\.jsonl: no column looks like a prompt or text, found \[alpha, beta\]"),
    ("empty.jsonl", "", r"empty\.jsonl: the file is empty"),
    ("latin.csv", "text\ncaf\xe9\n".encode("latin-1"), r"latin\.csv: not UTF-8 \(byte 0xe9"),
    ("blank.jsonl", [{"text": ""}, {"text": "  "}], r"blank\.jsonl: no usable rows after cleaning \(2 empty target\)"),
    ("robot.jsonl", [{"messages": [{"role": "user", "content": "hi"}]},
                     {"messages": [{"role": "robot", "content": "beep"}]}], r'robot\.jsonl line 2: unknown role "robot"'),
    ("ragged.csv", "prompt,completion\na,b\nc,d,e\n", r"ragged\.csv row 3: 3 fields, but the header has 2"),
    ("list.json", "[1, 2]", r"list\.json record 1: expected an object"),
    ("data.xlsx", "x", r"unsupported file type '\.xlsx'"),
]


@pytest.mark.parametrize("name,content,pattern", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_gets_one_line_error(write, name, content, pattern):
    path = write(name, content)
    with pytest.raises(StudioError, match=pattern) as info:
        prepare_dataset(str(path))
    assert "\n" not in str(info.value)


def test_missing_file_and_unknown_format(write):
    with pytest.raises(StudioError, match="nope.jsonl: no such file"):
        prepare_dataset("nope.jsonl")
    with pytest.raises(StudioError, match="unknown format 'yaml'"):
        prepare_dataset(str(write("t.jsonl", [{"text": "x"}])), format="yaml")
    with pytest.raises(StudioError, match=r"format 'dolly' needs the columns instruction/response"):
        prepare_dataset(str(write("t2.jsonl", [{"text": "x"}])), format="dolly")


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(StudioError, match="can't reach the Hugging Face Hub"):
        prepare_dataset("someone/not-cached-dataset-xyz")


def test_bundled_samples_load():
    for name, fmt in [("quotes", "quotes"), ("dolly", "dolly"), ("e2e", "e2e")]:
        data = prepare_dataset(name)
        assert data.format.name == fmt and data.rows > 20


# ---- issue 7: the Arrow path at scale ------------------------------------------------------------------------
def test_large_file_path_gives_the_same_rows_and_errors(write, monkeypatch):
    """Files above the in-memory size go through datasets' own builders; results and line numbers are the same."""
    from studio.data import sources

    rows = [{"instruction": f"q{i}", "context": "", "response": f"a{i}" if i % 4 else ""} for i in range(40)]
    path = write("big.jsonl", rows)
    small = prepare_dataset(str(path))
    monkeypatch.setattr(sources, "IN_MEMORY_BYTES", 0)
    large = prepare_dataset(str(path))
    assert large.rows == small.rows == 30 and large.dropped == {"empty target": 10}
    assert large.splits["train"]["prompt"] == small.splits["train"]["prompt"]
    bad = write("bad_big.jsonl", '{"text": "ok"}\n\n{"text": oops}\n')
    with pytest.raises(StudioError, match=r"bad_big\.jsonl line 3: malformed JSON"):
        prepare_dataset(str(bad))
    robot = write("robot_big.jsonl", [{"messages": [{"role": "user", "content": "hi"}]},
                                      {"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(StudioError, match=r'robot_big\.jsonl line 2: unknown role "robot"'):
        prepare_dataset(str(robot))


def test_prepared_data_is_cached_by_content(write, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIO_DATA_CACHE", str(tmp_path / "cache"))
    path = write("c.jsonl", [{"text": f"row {i}"} for i in range(30)])
    first = prepare_dataset(str(path), cache=True)
    again = prepare_dataset(str(path), cache=True)
    assert first.cache_dir and again.cache_dir == first.cache_dir
    assert again.splits["train"]["text"] == first.splits["train"]["text"] and again.rows == 30
    assert prepare_dataset(str(path), cache=True, seed=7).cache_dir != first.cache_dir  # settings are in the key
    path.write_text("\n".join(json.dumps({"text": f"new {i}"}) for i in range(30)))  # same name, new content
    changed = prepare_dataset(str(path), cache=True)
    assert changed.cache_dir != first.cache_dir and changed.splits["train"][0]["text"].startswith("new")


def test_streaming_keeps_the_first_rows(tmp_path):
    folder = tmp_path / "stream_me"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"text": f"line {i}"}) for i in range(50)))
    data = prepare_dataset(str(folder), streaming=True, max_rows=20)
    assert data.rows == 20 and sorted(sum((list(s["text"]) for s in data.splits.values()), [])) == \
        sorted(f"line {i}" for i in range(20))
    with pytest.raises(StudioError, match="streaming needs a row limit"):
        prepare_dataset(str(folder), streaming=True)


def test_prompt_and_completion_are_never_glued_into_one_word(write):
    """TRL trains on prompt + completion: a pair with no space at the join gets one on the completion side."""
    from studio.data import prepare_dataset, render_example

    rows = [{"prompt": "Which planet is called the red planet?", "completion": "Mars."},
            {"prompt": "Q: 2+2=", "completion": " 4"}, {"prompt": "Line\n", "completion": "next"}] * 4
    data = prepare_dataset(str(write("pc.jsonl", rows)), splits="100/0/0")
    texts = {render_example(r) for r in data.splits["train"]}
    assert texts == {"Which planet is called the red planet? Mars.", "Q: 2+2= 4", "Line\nnext"}
