"""Issue 18, item 2: every field a visitor can send, straight through the API of ONE running --shared app.

A table of (endpoint, field, hostile value) cases: wrong types (words in number boxes, dicts and lists where text
goes, a chat that is not a list), NaN/Infinity (sent as raw JSON: gradio_client refuses to encode them), huge
numbers, paths, `..`, URLs, garbage Hub ids, 10k-character and NUL-carrying text. Each answer must be one plain
line (no traceback, no "unexpected error", no absolute server path, the token never echoed), a refused start must
leave no run folder, and the app must still answer afterwards. Hostile recipe YAML (there is no recipe upload on
the page: recipes reach the studio as files, `studio train FILE`) goes through `load_recipe` in-process.
"""

import json
import random
import re

import httpx
import pytest

from app_server import start_app
from conftest import ROOT

SEED = 18
TOKEN = "hf_" + "Zq9" * 12  # a recognisable token typed into the Export tab's field: never echoed back
FORM = ["embedded/tiny-llama", "quotes", "quotes", "", 16, 32, 0.0, "q_proj, v_proj", False, 0.005, 2, 3.0, 1, 4,
        128, 5, "cosine", "adamw_torch", 5, "no", 50, 50, 42, False, False, False, False, "none", "",  # page order
        None, None, None, None, None, None, None, None, None,  # the LAPDOG section's fields (hidden for this recipe)
        *["(none)", 1.0, ""] * 4, 8, 256, 1.0, 0.0, 200,  # the GRPO section's reward rows and fields (hidden too)
        "", None]  # held-out data (dataset.eval_source) and LAPDOG's retriever signal, last in the API's order
# (a shared app has no reward-code field)
FIELD = {"model": 0, "source": 1, "format": 2, "template": 3, "lora_r": 4, "lora_alpha": 5, "lora_dropout": 6,
         "targets": 7, "4bit": 8, "learning_rate": 9, "max_steps": 10, "epochs": 11, "batch": 12, "accum": 13,
         "max_length": 14, "warmup": 15, "optim": 17, "logging_steps": 18, "eval_steps": 20, "seed": 22,
         "prompts": 28, "eval_source": len(FORM) - 2}  # 27 is report_to
NAN, INF = float("nan"), float("inf")
HOSTILE_TEXT = ["../../etc/passwd", "/etc/passwd", "http://169.254.169.254/latest", "file:///etc/passwd",
                "a" * 10_000, "x\x00y", "\x1b[2J", "owner/" + "n" * 200, "..", "~", "{text.__class__}", ""]
CHAT = ["i like dogs", "hi", [], [], "embedded/tiny-llama", None, "off", "", 0, False, 0.0, 0.9, 1.1, 8, 0]  # …, seed


def _train_cases(rng):
    bad_numbers = [-1, 0, NAN, INF, -INF, 1e308, 10**12, "abc", "", {"a": 1}, [1], True]
    cases = []
    for key in ("learning_rate", "max_steps", "lora_r", "lora_alpha", "max_length", "batch", "accum", "epochs",
                "warmup", "seed", "lora_dropout", "logging_steps", "eval_steps"):
        for value in rng.sample(bad_numbers, 2) + [NAN, 10**12]:  # 2 drawn a key: the suite's time (each is a call)
            cases.append((key, value))
    for key in ("model", "source", "template", "targets", "optim", "prompts", "format", "eval_source"):
        for value in rng.sample(HOSTILE_TEXT, 3) + [{"a": 1}, ["a", 1], 5]:
            cases.append((key, value))
    return cases


TEXT_FIELDS = ("model", "source", "template", "targets", "optim", "prompts", "format", "eval_source")


def _cases():
    """(name, api, args, must_refuse): must_refuse is True where a good answer is a refusal."""
    rng = random.Random(SEED)
    out = []
    for key, value in _train_cases(rng):
        form = list(FORM)
        form[FIELD[key]] = value
        out.append((f"check {key}={value!r:.40}", "/check_parameters", form, None))
        # a start only where the value can never train: it must be refused before a run folder or thread exists
        text_field = key in TEXT_FIELDS
        if (key in ("format", "targets") and value != "") or (not text_field and (
                not isinstance(value, (str, int)) or value in ("abc", 10**12, 1e308)
                or (value == -1 and key != "max_steps"))):
            out.append((f"train {key}={value!r:.40}", "/start_training", ["visitor-1", *form], True))
    for value in HOSTILE_TEXT[:4] + ["..", "../x", "~/x", "runs/../../x"]:  # held-out data a visitor was not handed
        form = list(FORM)
        form[FIELD["eval_source"]] = value
        out.append((f"train eval_source={value!r:.40}", "/start_training", ["visitor-1", *form], True))
    form = list(FORM)
    form[FIELD["max_length"]] = 10**12
    out.append(("save recipe max_length=1e12", "/save_recipe", form, True))
    for value in ["../x", "a" * 10_000, "x\x00", {"a": 1}]:
        out.append((f"label name {value!r:.30}", "/start_labelling",
                    ["v", value, "embedded/tiny-llama", 0, 8, "Q?", ""], True))
    for i, (seed, tokens, text) in enumerate([("abc", 8, "Q?"), (NAN, 8, "Q?"), (0, INF, "Q?"), (0, NAN, "Q?"),
                                              (0, 8, "x" * 10_000), (0, 8, "\n\n".join(["q"] * 500)),
                                              ]):
        out.append((f"label values {i}", "/start_labelling", ["v", f"fz{i}", "embedded/tiny-llama", seed, tokens,
                                                              text, ""], True))
    for source in HOSTILE_TEXT[:5]:
        out.append((f"label source {source:.30}", "/start_labelling", ["v", "fz", "embedded/tiny-llama", 0, 8, "",
                                                                       source], True))
    out.append(("label A with no session", "/label_a", ["x" * 100_000, None], True))
    for src, rows, name in [("../../etc/passwd", 5, "x"), ("dolly", NAN, "x"), ("dolly", "many", "x"),
                            ("dolly", 5, "../../x"), ("dolly", 10**6, "x"), ("http://evil/x", 5, "x"), ("dolly", 5, "a" * 10_000)]:
        out.append((f"build {src:.20} {rows!r} {name:.10}", "/build_pairs", [src, "embedded/tiny-llama", name, rows],
                    True))
    dpo = ["v", "(base model: a fresh adapter)", "embedded/tiny-llama", "pairs", 0.1, "sigmoid", 1e-4, 64, 2, 4, 8,
           ["none"]]  # the last: report_to
    for index, value in [(4, NAN), (4, -1), (4, "x"), (5, "nonsense"), (6, INF), (7, 10**12), (8, 10**12),
                         (9, 10**9), (3, "/etc/passwd"), (3, "runs/pairs/../../x.jsonl"), (2, "http://evil/m")]:
        args = list(dpo)
        args[index] = value
        out.append((f"dpo [{index}]={value!r:.30}", "/start_dpo", args, True))
    turn = lambda role, content: {"role": role, "content": content}  # noqa: E731
    for index, value in [(0, "p" * 4001), (1, "m" * 4001), (2, "not a list"), (2, [turn("wizard", None)] * 3),
                         (2, [turn("user", None)]), (2, [5, None]), (2, [{"content": "x"}]),
                         (8, "abc"), (8, NAN), (10, NAN), (11, INF), (12, -INF), (13, NAN), (13, 10**12),
                         (7, "/etc/passwd"), (7, "../../x"), (7, "http://evil/x"), (4, "../../etc"),
                         (4, "http://evil/m"), (4, "/"), (6, "nonsense")]:
        args = list(CHAT)
        args[index] = value
        out.append((f"chat [{index}]={value!r:.30}", "/send", args, True))
    block = lambda role, text: {"role": role, "content": [{"type": "text", "text": text}]}  # noqa: E731 - Gradio 6
    long_history = [block("user", "q"), block("assistant", "a")] * 5000
    out.append(("chat 10k turns", "/send", ["p", "hi", long_history, [], *CHAT[4:]], False))
    out.append(("chat huge old turn", "/send", ["p", "hi", [block("user", "q" * 100_000)], [], *CHAT[4:]], True))
    out.append(("chat unknown roles", "/send", ["p", "hi", [block("wizard", "q"), block("system", "x")], [],
                                                *CHAT[4:]], False))
    for dataset in HOSTILE_TEXT[:9] + ["a/b/c/d", "-bad-/name"]:
        out.append((f"evaluate dataset {dataset:.30}", "/evaluate",
                    [[], "embedded/tiny-llama", "test split", dataset, 2, 4, "", None, "row order"], True))
    for n, n_new in [(NAN, 4), ("x", 4), (2, INF), (2, 10**9), (10**12, 4)]:
        out.append((f"evaluate n={n!r} n_new={n_new!r}", "/evaluate",
                    [[], "embedded/tiny-llama", "test split", "quotes", n, n_new, "", None, "row order"], True))
    for repo, message, token in [("../../x", "m", TOKEN), ("a" * 10_000, "m", TOKEN), ("ok/name", "x" * 100_000, TOKEN),
                                 ("ok/name", "a\x00b", TOKEN), ({"a": 1}, "m", TOKEN), ("http://evil/x", "\x1b[31m", TOKEN),
                                 ("ok/..", "m", TOKEN), ("/etc/passwd", "m", TOKEN), ("ok/name", "m", "hf_ x\x00"),
                                 ("ok/name", "m", "x" * 10_000), ("ok/name", "m", {"a": TOKEN}),
                                 ("ok/name", "m", TOKEN + "\n" + TOKEN)]:
        out.append((f"push {repo!r:.20} {message!r:.10}", "/push_run", ["fz-run", ["adapter"], repo, False, message,
                                                                        token], True))
    for hub in HOSTILE_TEXT[:9] + ["a/b/c", "-x-/y"]:
        out.append((f"data hub {hub:.30}", "/inspect_data",
                    ["Hub dataset", "quotes", None, "", hub, "", "", "auto", "", ""], True))
    for path in HOSTILE_TEXT[:7] + [str(ROOT / "README.md"), "/proc/self/environ"]:
        out.append((f"data path {path:.30}", "/inspect_data",
                    ["Local path", "quotes", None, path, "", "", "", "auto", "", ""], True))
    for name in ["../../etc/passwd", "x" * 10_000]:
        out.append((f"fill {name:.20}", "/fill", [name], True))
    return out


def _call(url: str, api: str, args: list) -> tuple[list | None, str | None]:
    """One call through Gradio's HTTP API (what gradio_client does, but JSON may carry NaN/Infinity):
    (outputs, None) or (None, the error line Gradio sent)."""
    with httpx.Client(base_url=url, timeout=120) as http:
        event = http.post(f"gradio_api/call{api}", content=json.dumps({"data": args}),
                          headers={"content-type": "application/json"})
        if event.status_code >= 400:
            return None, f"HTTP {event.status_code}: {event.text[:300]}"
        event_id = event.json()["event_id"]
        kind, data = None, None
        with http.stream("GET", f"gradio_api/call{api}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                    if kind in ("complete", "error"):
                        break
    if kind == "error":
        payload = json.loads(data) if data and data != "null" else None
        return None, payload if isinstance(payload, str) else json.dumps(payload)
    return json.loads(data), None


def _texts(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _texts(v)
    elif isinstance(value, list):
        for v in value:
            yield from _texts(v)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    runs = tmp_path_factory.mktemp("fuzz-fields") / "runs"
    runs.mkdir()
    # a finished run of the app's owner, exported: what a visitor's push reads (so the repo id, commit message and
    # token fields are reached, not just the run check); HF_HUB_OFFLINE=1 stops every push before the network
    (runs / "fz-run" / "export" / "adapter").mkdir(parents=True)
    (runs / "fz-run" / "export" / "adapter" / "adapter_config.json").write_text("{}")
    (runs / "fz-run" / "recipe.yaml").write_text("name: fz-run\nmodel_name_or_path: embedded/tiny-llama\n")
    (runs / "fz-run" / "events.jsonl").write_text("")
    proc, url = start_app(runs, extra_args=["--shared"])
    yield proc, url, runs
    proc.terminate()
    proc.wait(10)


def test_every_field_through_the_api(app):
    proc, url, runs = app
    from gradio_client import Client

    cases = _cases()
    assert len(cases) >= 200
    # the untouched form reaches the studio: a form that drifted from the page's fields (one value short) is
    # refused by Gradio itself for every case, and would test nothing
    outputs, error = _call(url, "/check_parameters", FORM)
    assert error is None and "**Parameters:**" in outputs[0], (error, outputs)
    problems, counts = [], {"refused": 0, "answered": 0, "refused by gradio": 0}
    server_paths = re.compile(re.escape(str(runs.parent)) + "|" + re.escape(str(ROOT)) + r"|/tmp/|/root/")
    for name, api, args, must_refuse in cases:
        before = sorted(p.name for p in runs.iterdir())
        sent = json.dumps(args, default=str)
        outputs, error = _call(url, api, args)
        assert proc.poll() is None, f"the app died on {name}"
        if error is not None:
            counts["refused by gradio"] += 1
            lines = [error]
        else:
            lines = list(_texts(outputs))
            said = " ".join(lines)
            refused = "studio-error" in said
            counts["refused" if refused else "answered"] += 1
            if must_refuse and not refused:
                problems.append(f"{name}: not refused: {said[:200]}")
            lines = [t for t in lines if "studio-error" in t]
        for text in lines:
            if ("Traceback" in text or "unexpected error" in text or "has not enabled verbose error" in text
                    or "\n" in text.strip() or any(p not in sent for p in server_paths.findall(text)) or TOKEN in text or len(text) > 1500):
                problems.append(f"{name}: {text[:300]!r}")
        if api in ("/start_training", "/start_dpo"):
            now = sorted(p.name for p in runs.iterdir())
            if now != before:  # a start that was not refused: stop it and say so
                problems.append(f"{name}: a run folder was made: {set(now) - set(before)}")
                Client(url, verbose=False).predict("visitor-1", api_name="/stop_training")
    # the server still answers a plain request afterwards
    status, info, _ = Client(url, verbose=False).predict("Bundled sample", "quotes", None, "", "", "", "", "auto", "",
                                                         "", api_name="/inspect_data")
    assert "Loaded" in status and "format **quotes**" in info
    print(f"\n{len(cases)} hostile field values: {counts}, problems {len(problems)}")
    assert not problems, "\n".join(problems)


HOSTILE_YAML = {
    "list.yaml": "- a\n- b\n",
    "scalar.yaml": "42\n",
    "null.yaml": "~\n",
    "unknown.yaml": "name: x\ndataset: {source: quotes}\nmodel_name_or_path: embedded/tiny-llama\nlearnin_rate: 1\n",
    "types.yaml": "name: x\ndataset: {source: quotes}\nmodel_name_or_path: embedded/tiny-llama\nlora_r: [1, 2]\n",
    "dataset-list.yaml": "name: x\ndataset: [1, 2]\nmodel_name_or_path: embedded/tiny-llama\n",
    "huge.yaml": "name: x\ndataset: {source: quotes}\nmodel_name_or_path: embedded/tiny-llama\nmax_steps: 1e999\n",
    "bignum.yaml": "name: x\ndataset: {source: quotes}\nmodel_name_or_path: embedded/tiny-llama\nlora_r: " + "9" * 5000
                   + "\n",
    "nan.yaml": "name: x\ndataset: {source: quotes}\nmodel_name_or_path: embedded/tiny-llama\nlearning_rate: .nan\n",
    "inf.yaml": "name: x\ndataset: {source: quotes}\nmodel_name_or_path: embedded/tiny-llama\nlearning_rate: .inf\n",
    "laughs.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
    "python.yaml": "name: !!python/object/apply:os.system ['echo pwned']\n",
    "python-name.yaml": "name: !!python/name:os.system\n",
    "deep.yaml": "a: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "deep-map.yaml": "".join("  " * i + f"k{i}:\n" for i in range(3000)) + "  " * 3000 + "v\n",
    "big.yaml": "name: x\ndescription: " + "y" * (10 * 2**20) + "\n",
    "binary.yaml": "name: \xff\xfe\x00x\n",
    "tabs.yaml": "name: x\n\tdataset: 1\n",
    "method.yaml": "method: {a: 1}\n",
    "prompts.yaml": "name: x\ndataset: {source: quotes}\nmodel_name_or_path: embedded/tiny-llama\neval_prompts: 5\n",
}


def test_hostile_recipe_yaml(tmp_path):
    """Recipe files a visitor might hand over: one StudioError line each, bounded time, nothing executed."""
    import time

    from studio.errors import StudioError
    import trl  # noqa: F401 - imported before the clock starts: validation builds TRL's configs
    from studio.recipes import load_recipe

    for name, text in HOSTILE_YAML.items():
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8", "surrogateescape") if name != "binary.yaml" else text.encode("latin-1"))
        start = time.time()
        with pytest.raises(StudioError) as caught:
            load_recipe(path)
        message = str(caught.value)
        assert "\n" not in message and len(message) < 600 and "Traceback" not in message, (name, message[:600])
        # a hang guard (billion laughs would never finish), not a speed check: 59 s was seen at load average 20+
        assert time.time() - start < 300, name
    assert "anchors and aliases" in str(pytest.raises(StudioError, load_recipe, tmp_path / "laughs.yaml").value)


def test_odd_story_corpora_pairs_files_and_embedder_names(tmp_path, monkeypatch):
    """Files a visitor can't name on a shared app (only samples, runs/pairs and their own uploads) but the owner
    can: a seeded share of the odd files of test_fuzz.py as a Persona Chat story corpus and as DPO pairs
    (`load_pairs`, what Start DPO reads) — each read or refused with one line; and embedder names (a LAPDOG
    recipe's `retrieval.embedder`) on a shared studio: paths, `..`, URLs refused, Hub ids allowed by name."""
    from test_fuzz import generate

    from studio.errors import StudioError
    from studio.pairs import load_pairs
    from studio.recipes import Recipe
    from studio.retrieval import check_embedder_source, load_corpus

    rng = random.Random(SEED)
    odd = [(n, d) for n, d in generate() if len(d) < 2**20]
    picked = [c for c in odd if "-pref" in c[0] or "chosen" in c[0] or "-top0" in c[0]]
    picked += rng.sample([c for c in odd if c not in picked], 30)
    outcomes = {"read": 0, "refused": 0}
    for name, data in picked:
        path = tmp_path / name
        path.write_bytes(data)
        for what, read in (("corpus", lambda: load_corpus(str(path))),
                           ("pairs", lambda: load_pairs(Recipe(header={"method": "dpo",
                                                                       "dataset": {"source": str(path)}})))):
            try:
                read()
                outcomes["read"] += 1
            except StudioError as e:
                assert "\n" not in str(e) and len(str(e)) < 600 and "Traceback" not in str(e), (what, name, str(e))
                outcomes["refused"] += 1
    print(f"\n{len(picked)} odd files as story corpus and as pairs: {outcomes}")
    monkeypatch.setenv("STUDIO_SHARED", "1")
    for bad in ["../../etc", "/etc", "/", "~", "http://evil/x", "file:///etc", "a" * 10_000, "x\x00y", "runs/../.."]:
        with pytest.raises(StudioError) as caught:
            check_embedder_source(bad)
        assert "\n" not in str(caught.value) and len(str(caught.value)) < 600
    assert check_embedder_source("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
