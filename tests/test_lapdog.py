"""LAPDOG: the retriever's target (BLEU normalisation, all-zero guard), one stage-2 step, a whole tiny run."""

import json
import math

import numpy as np
import pytest
import torch

from studio.train.lapdog import kl_target, reply_scores, retriever_loss

ROWS = [
    {"persona": "i love to ski. i spend every winter in the mountains.",
     "history": [{"role": "user", "content": "what do you do in winter?"}], "reply": "i go skiing in the alps."},
    {"persona": "i have a dog named biscuit. i walk my dog every morning.",
     "history": [{"role": "user", "content": "any pets?"}], "reply": "yes, my dog biscuit loves the park."},
]


def test_target_follows_the_metric_and_survives_all_zero_bleu():
    gold = "i go skiing in the alps with my brother"
    scores = reply_scores(["i go skiing in the alps with my brother", "i go skiing", "banana phone"], gold)
    assert scores[0] > scores[1] > scores[2] == 0.0
    p = kl_target(scores, 0.85)
    assert float(p.sum()) == pytest.approx(1.0) and p[0] > p[1] > p[2]

    zero = reply_scores(["banana", "phone", "tree"], gold)  # every BLEU is 0: no division by zero
    assert zero == [0.0, 0.0, 0.0]
    uniform = kl_target(zero, 0.85)
    assert torch.allclose(uniform, torch.full((3,), 1 / 3)) and not torch.isnan(uniform).any()


def test_bleu_is_divided_by_its_l2_norm_over_the_candidates():
    from studio.metrics import sentence_scores

    gold, replies = "i walk my dog biscuit every morning", ["i walk my dog every morning", "my dog biscuit"]
    rows = [sentence_scores(r, gold) for r in replies]
    norm = math.sqrt(sum(r["bleu"] ** 2 for r in rows))
    expected = [r["f1"] / 100 + r["rougeL"] / 100 + r["bleu"] / norm for r in rows]
    assert reply_scores(replies, gold) == pytest.approx(expected)


def test_kl_loss_pulls_the_query_towards_the_better_story():
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.2, 0.0]]), dim=-1).requires_grad_(True)
    stories = torch.nn.functional.normalize(torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]), dim=-1)
    target = torch.tensor([[0.1, 0.9]])  # the second story gave the better reply
    loss = retriever_loss(q, stories, target, 0.8)
    loss.backward()
    assert float(loss) > 0
    assert q.grad[0, 1] < 0 < q.grad[0, 0]  # descending moves the query towards story 2, away from story 1


@pytest.fixture(scope="module")
def generator(embedded_path):
    from studio.inference import load_for_inference

    return load_for_inference("embedded/tiny-llama")


def test_a_stage2_step_changes_the_query_encoder_and_not_the_story_index(generator, write, tmp_path):
    from studio.retrieval import build_index, load_corpus, load_embedder
    from studio.persona import DEFAULTS
    from studio.train.lapdog import RetrieverLearner

    stories = [{"id": f"s{i}", "title": "", "text": t} for i, t in enumerate([
        "i went skiing in the alps and fell in the snow.", "my dog biscuit stole a sandwich at the park.",
        "i baked a lemon pie for my grandmother.", "i fixed a bug at work all night.",
        "i swam in a cold lake at sunrise.", "i painted a barn by the river."])]
    index = build_index(load_corpus(write("stories.jsonl", stories)), cache_dir=tmp_path / "cache")
    vectors_before = index.vectors(range(len(stories))).copy()
    file_before = index.path.read_bytes()
    encoder = load_embedder(None, fresh=True)
    weights_before = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    cfg = {**DEFAULTS, "k": 3, "candidate_random": 0.34, "retriever_batch": 2, "reply_max_new_tokens": 6,
           "tau_score": 0.1}
    learner = RetrieverLearner(encoder, index, ROWS, cfg, generator.tokenizer)
    metrics = learner.step(generator.model, step=1, budget=400)

    assert set(metrics) == {"retriever/loss", "retriever/target_entropy"}
    assert metrics["retriever/loss"] >= 0 and 0 <= metrics["retriever/target_entropy"] <= math.log(3) + 1e-6
    changed = [n for n, p in encoder.named_parameters() if not torch.equal(p.detach(), weights_before[n])]
    assert changed, "the query encoder's weights did not move"
    assert np.array_equal(index.vectors(range(len(stories))), vectors_before)
    assert index.path.read_bytes() == file_before
    assert 0.0 <= learner.top1_change_rate() <= 1.0


STORIES = ["i went skiing in the alps and fell in the snow.", "my dog biscuit stole a sandwich at the park.",
           "i baked a lemon pie for my grandmother.", "i fixed a bug at work all night.",
           "i swam in a cold lake at sunrise.", "i painted a barn by the river."]


@pytest.fixture()
def learner_for(generator, write, tmp_path):
    """A RetrieverLearner over six stories with the embedded generator's tokenizer and `cfg` overrides."""
    from studio.persona import DEFAULTS
    from studio.retrieval import build_index, load_corpus, load_embedder
    from studio.train.lapdog import RetrieverLearner

    index = build_index(load_corpus(write("stories.jsonl", [{"id": f"s{i}", "title": "", "text": t}
                                                            for i, t in enumerate(STORIES)])),
                        cache_dir=tmp_path / "cache")

    def make(rows=ROWS, **cfg):
        cfg = {**DEFAULTS, "k": 3, "candidate_random": 0.0, "retriever_batch": 2, "reply_max_new_tokens": 6,
               "tau_score": 0.1, **cfg}
        return RetrieverLearner(load_embedder(None, fresh=True), index, rows, cfg, generator.tokenizer)

    return make


def test_batched_candidates_score_as_one_prompt_at_a_time(generator, learner_for):
    """Issue 32 (speed): every candidate of a retriever step is generated in one batched, left-padded generate;
    the replies, metric scores and KL targets are those of one prompt at a time."""
    import random

    learner = learner_for()
    cands = learner.candidates(ROWS, random.Random(0))
    prompts = learner.candidate_prompts(ROWS, cands, budget=400)
    assert len(prompts) == 2 * 3 and len({len(generator.tokenizer(p)["input_ids"]) for p in prompts}) > 1  # padded

    calls = []
    model_generate = generator.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return model_generate(*args, **kwargs)

    generator.model.generate = counting
    try:
        batched = learner.candidate_replies(generator.model, prompts)
        assert calls == [6]  # one generate over all k candidates of both examples
        alone = learner.candidate_replies(generator.model, prompts, batch_size=1)
        assert calls[1:] == [1] * 6
    finally:
        del generator.model.generate
    assert batched == alone and any(batched)
    assert torch.allclose(learner.targets(ROWS, batched, 3), learner.targets(ROWS, alone, 3), atol=1e-6)
    # scored as the persona table scores a reply: up to its first newline
    tailed = [r + "\ni go skiing in the alps." for r in batched]
    assert torch.allclose(learner.targets(ROWS, tailed, 3), learner.targets(ROWS, batched, 3), atol=1e-6)
    assert generator.model.training is False  # candidate_replies restores the mode it found (eval here)

    # candidate replies may be shorter than evaluation replies (retrieval.candidate_max_new_tokens)
    short = learner_for(candidate_max_new_tokens=2).candidate_replies(generator.model, prompts)
    assert short == learner_for(reply_max_new_tokens=2).candidate_replies(generator.model, prompts)
    assert short != batched and sum(map(len, short)) < sum(map(len, batched))


def test_refresh_encodes_each_distinct_query_once_and_retrieves_as_one_row_at_a_time(learner_for):
    """Issue 32 (speed): the generator's stories (refresh, stage 2's start) come from each distinct query encoded
    once (a persona is the query of every turn of its dialogue) and are the stories one row at a time finds."""
    import torch

    rows = [dict(r, history=[{"role": "user", "content": f"turn {i}"}]) for i in range(5) for r in ROWS]
    rows.append({"persona": "i paint barns by the river on sundays.", "history": [], "reply": "nice."})
    learner = learner_for(rows)
    encoded = []
    encode = learner.encode

    def counting(texts, grad):
        encoded.extend(texts)
        return encode(texts, grad)

    learner.encode = counting
    ids = learner.topk(rows)
    assert sorted(encoded) == sorted({r["persona"] for r in rows})  # 3 distinct queries for 11 rows
    one_by_one = []
    for row in rows:
        with torch.no_grad():
            q = encode(learner.queries([row]), grad=False).numpy()
        one_by_one.append([int(i) for i in learner.index.search(q, 3)[1][0]])
    assert ids == one_by_one
    assert ids[-1][0] == 5  # the barn painter's story first
    assert learner.top1(rows) == [i[0] for i in one_by_one]


def test_likelihood_signal_scores_the_gold_reply_per_story_without_generating(generator, learner_for):
    """Issue 32 (a sharper signal): `retrieval.signal: likelihood` targets softmax(log p(gold | story)/τ_gold), the
    teacher-forced log-likelihoods summed over the gold reply's tokens, batched equal to one full forward per
    prompt; no candidate is generated, and the step still moves the query encoder."""
    import random

    from studio.errors import StudioError
    from studio.inference import continuation_logprobs
    from studio.recipes import load_recipe

    learner = learner_for(signal="likelihood", tau_gold=1.0)
    cands = learner.candidates(ROWS, random.Random(0))
    prompts = learner.candidate_prompts(ROWS, cands, budget=400)
    golds = [row["reply"] for row in ROWS for _ in range(3)]
    batched = continuation_logprobs(generator.model, generator.tokenizer, prompts, golds, batch_size=4)
    tok = generator.tokenizer
    for prompt, gold, got in zip(prompts, golds, batched):  # one unpadded forward each, summed by hand
        head = tok(prompt)["input_ids"]
        ids = head + tok(gold, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(generator.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        assert got == pytest.approx(sum(float(logp[t - 1, ids[t]]) for t in range(len(head), len(ids))), abs=1e-3)
    assert len(set(round(x, 4) for x in batched)) > 1 and all(x < 0 for x in batched)

    target = learner.likelihood_targets(generator.model, ROWS, prompts, 3)
    expected = torch.softmax(torch.tensor(batched).view(2, 3), -1)
    assert torch.allclose(target, expected, atol=1e-4)

    generator.model.generate = lambda *a, **k: pytest.fail("the likelihood signal generated a reply")
    try:
        before = {n: p.detach().clone() for n, p in learner.encoder.named_parameters()}
        metrics = learner.step(generator.model, step=1, budget=400)
    finally:
        del generator.model.generate
    assert metrics["retriever/loss"] >= 0
    assert any(not torch.equal(p.detach(), before[n]) for n, p in learner.encoder.named_parameters())
    with pytest.raises(StudioError, match="retrieval.signal must be 'metric' or 'likelihood'"):
        load_recipe("tiny-persona-lapdog", ["retrieval.signal=bleu"])


def test_candidate_max_new_tokens_is_a_checked_recipe_key():
    from studio.errors import StudioError
    from studio.persona import settings
    from studio.recipes import load_recipe
    from studio.train.lapdog import candidate_tokens

    recipe = load_recipe("tiny-persona-lapdog", ["retrieval.candidate_max_new_tokens=8"])
    assert candidate_tokens(settings(recipe)) == 8
    assert candidate_tokens(settings(load_recipe("tiny-persona-lapdog", []))) == 16  # unset: reply_max_new_tokens
    with pytest.raises(StudioError, match="candidate_max_new_tokens' must be from 1 to 512"):
        load_recipe("tiny-persona-lapdog", ["retrieval.candidate_max_new_tokens=0"])


def test_stage2_inputs_read_like_trl_renders_a_messages_row_and_refresh_counts_changes(generator, tmp_path):
    """Issue 32: the generator's stage-2 rows are tokenized when read (so a refresh changes them); each reads
    exactly as TRL's SFTTrainer renders the same messages row."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from studio.train.lapdog import StoryInputs

    stories = [{"id": "a", "title": "", "text": "i skied down a black run."},
               {"id": "b", "title": "snow", "text": "my dog ate the snow."}]
    inputs = StoryInputs(ROWS, [[0, 1], [1, 0]], stories, generator.tokenizer, 400, 384)
    rows = Dataset.from_list([{"messages": inputs.messages(i)} for i in range(len(ROWS))])
    trl = SFTTrainer(model=generator.model, args=SFTConfig(output_dir=str(tmp_path / "o"), max_length=384,
                                                          use_cpu=True, report_to="none"),
                     train_dataset=rows, processing_class=generator.tokenizer)
    assert [list(ids) for ids in trl.train_dataset["input_ids"]] == [inputs[i]["input_ids"] for i in range(len(ROWS))]
    assert "i skied down a black run." in generator.tokenizer.decode(inputs[0]["input_ids"])
    assert inputs.refresh([[0, 1], [0, 1]], step=4) == 1 and inputs.refreshed_at == 4
    inputs.save(tmp_path)
    again = StoryInputs(ROWS, [[1, 1], [1, 1]], stories, generator.tokenizer, 400, 384)
    assert again.load(tmp_path) and again.ids == [[0, 1], [0, 1]] and again.refreshed_at == 4


def test_tiny_lapdog_run_stops_in_stage2_resumes_and_chat_loads_adapter_and_retriever(tmp_path, embedded_path,
                                                                                       monkeypatch, capsys):
    import time

    from studio.chat import load_setup, reply
    from studio.jobs import Job, start_job
    from studio.runs import CANCELLED, DONE
    from studio.recipes import load_recipe

    recipe = load_recipe("tiny-persona-lapdog", [
        "retrieval.stage1_steps=2", "retrieval.stage2_steps=6", "retrieval.reply_max_new_tokens=6",
        "logging_steps=1", "save_steps=2", "dataset.max_rows=24", "retrieval.refresh_steps=2"])
    monkeypatch.setenv("STUDIO_RUNS", str(tmp_path / "runs"))  # evaluation results are saved in the runs folder
    job = start_job(recipe, runs_dir=tmp_path / "runs", run_name="lapdog-test")
    deadline = time.time() + 600
    while job.active and job.step < 3 and time.time() < deadline:  # step 3 is stage 2's first
        time.sleep(0.05)
    job.request_stop()
    assert job.wait(600) and job.status == CANCELLED, job.error
    run = job.run_dir
    assert (run / "stage1" / "adapter" / "adapter_config.json").exists()
    assert any((c / "retriever" / "modules.json").exists() for c in (run / "stage2" / "checkpoints").glob("checkpoint-*"))
    from studio.errors import StudioError
    from studio.evaluate import persona_report

    with pytest.raises(StudioError, match="lapdog-test has not finished both stages"):
        persona_report("lapdog-test")  # stopped in stage 2: no final adapter or retriever yet

    job = start_job(None, resume=run)
    assert job.wait(600) and job.status == DONE, job.error
    assert any("resuming stage 2 from checkpoint-" in line for line in job.logs)
    assert (run / "adapter" / "adapter_config.json").exists()
    assert (run / "retriever" / "modules.json").exists() and (run / "retriever" / "lapdog.json").exists()

    replay = Job.from_run_dir(run)
    steps = [h["step"] for h in replay.history if "retriever/loss" in h]
    assert steps[0] == 3 and steps[-1] == 8  # stage 2 continues stage 1's step count, across the resume
    assert all({"retriever/target_entropy", "retriever/top1_change_rate"} <= set(h)
               for h in replay.history if "retriever/loss" in h)
    assert replay.summary["steps"] == 8 and replay.total == 8 and len(replay.summary["retrieval_examples"]) == 3
    # issue 32: the generator's inputs come again from the query encoder every 2 stage-2 steps (never at the last)
    refreshes = [h for h in replay.history if "retriever/inputs_changed" in h]
    assert refreshes and {h["step"] for h in refreshes} <= {4, 6}
    assert all(0 <= h["retriever/inputs_changed"] <= 22 and 0 <= h["retriever/inputs_changed_share"] <= 1
               for h in refreshes)
    assert any("generator inputs refreshed from the query encoder" in line for line in replay.logs)
    saved = json.loads(next((run / "stage2" / "checkpoints").glob("checkpoint-*/stage2_inputs.json")).read_text())
    assert len(saved["stories"]) == 22 and all(len(ids) == 4 for ids in saved["stories"])
    from studio.charts import loss_chart

    traces = {t.name: list(t.x) for t in loss_chart(replay.history).data}  # the Train tab's chart of this run
    assert traces["retriever KL loss (LAPDOG stage 2)"] == steps and traces["loss"][0] == 1
    assert replay.summary["first_loss"] == next(h["loss"] for h in replay.history if "loss" in h)  # stage 1's first

    setup = load_setup(str(run))
    assert setup.retriever.info["story_side"] == "frozen"
    assert setup.retriever.query_encoder == str(run / "retriever")
    # issue 34, item 6: "base vs tuned" on a LAPDOG run retrieves from the run's own stories in both columns
    base = load_setup(str(run), adapter=False)
    assert base.retriever.query_encoder != setup.retriever.query_encoder  # the untrained retriever
    assert [s["id"] for s in base.retriever.corpus.stories] == [s["id"] for s in setup.retriever.corpus.stories]
    text, used = reply(setup, ROWS[0]["persona"], ROWS[0]["history"], 2, temperature=0, max_new_tokens=6)
    assert len(used) == 2 and isinstance(text, str)

    # The paper's table for this run: three set-ups on the held-out dialogues, each really what it says.
    from peft import PeftModel

    from studio.persona import persona_messages
    from studio.evaluate import PERSONA_ARMS, load_result
    from studio.inference import chat_prompt, generate
    from studio.models import load_model, load_tokenizer
    from studio.retrieval import load_retriever
    from trl import ModelConfig

    result = persona_report("lapdog-test", limit=3)
    assert result["labels"] == list(PERSONA_ARMS) and result["owner"] == "lapdog-test"
    assert result["config"]["data"]["split"] == "validation" and 1 <= len(result["rows"]) <= 3
    for m in result["metrics"].values():
        assert {"f1", "bleu", "rougeL"} <= set(m) and all(0 <= m[key] <= 100 for key in ("f1", "bleu", "rougeL"))
    row = result["rows"][0]
    persona = row["prompt"].splitlines()[0].removeprefix("persona: ")
    fixed = load_retriever(None, "all-MiniLM-L6-v2").search([persona], 4)[0]
    learned = load_retriever(None, "all-MiniLM-L6-v2", run).search([persona], 4)[0]
    assert row["stories"] == {"fixed": [s["id"] for s in fixed], "lapdog": [s["id"] for s in learned]}
    # the closed-book column is the stage-1 adapter, loaded here on its own with plain PEFT
    tok = load_tokenizer(str(run / "stage1" / "adapter"))
    stage1 = PeftModel.from_pretrained(load_model(ModelConfig(model_name_or_path=str(embedded_path))),
                                       str(run / "stage1" / "adapter")).eval()
    history = [{"role": line.split(": ", 1)[0], "content": line.split(": ", 1)[1]}
               for line in row["prompt"].splitlines()[1:]]
    prompt = chat_prompt(tok, persona_messages(tok, persona, [], history, 384 - 6)[0])
    alone = generate(stage1, tok, [prompt], 6)[0].split("\n")[0].strip()
    assert row["outputs"][PERSONA_ARMS[0]] == alone
    # the gold reply's log-likelihood per token under each arm's prompt, teacher-forced (here closed-book, by hand)
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = head + tok(row["reference"], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(stage1(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    by_hand = sum(float(logp[t - 1, ids[t]]) for t in range(len(head), len(ids))) / (len(ids) - len(head))
    assert row["gold_ll"][PERSONA_ARMS[0]] == pytest.approx(by_hand, abs=1e-3)
    # issue 32: 95 % intervals over dialogues, LAPDOG vs fixed and fixed vs closed-book paired, said in words
    iv = result["intervals"]
    assert set(iv["intervals"]) == set(PERSONA_ARMS) and iv["rows"] == len(result["rows"])
    assert [(p["a"], p["b"]) for p in iv["paired"][::3]] == [(PERSONA_ARMS[2], PERSONA_ARMS[1]),
                                                              (PERSONA_ARMS[1], PERSONA_ARMS[0])]
    assert iv["dialogues"] == result["config"]["data"]["dialogues"] == len({r["prompt"].splitlines()[0]
                                                                             for r in result["rows"]})
    assert len(iv["words"]) == 6
    ll = iv["likelihood"]  # per dialogue, then intervals over dialogues, the same pairs
    assert ll["items"] == iv["dialogues"] and len(ll["words"]) == 2 and set(ll["means"]) == set(PERSONA_ARMS)
    for lab in PERSONA_ARMS:
        assert result["metrics"][lab]["gold_ll"] < 0 and ll["intervals"][lab][0] <= ll["means"][lab] <= ll["intervals"][lab][1]
    from studio.evaluate.intervals import intervals_markdown

    assert "gold reply log-likelihood per token" in intervals_markdown(result)
    # issue 32: `eval RUN --persona --data FILE` judges the run on dialogues of another source
    from studio import cli

    unseen = tmp_path / "unseen.jsonl"
    unseen.write_text("\n".join(json.dumps({"persona": [f"i am stranger {i}."], "reply": f"hello {i}",
                                            "history": [{"role": "user", "content": "hi"}]}) for i in range(4)))
    capsys.readouterr()
    assert cli.main(["eval", "lapdog-test", "--persona", "--data", str(unseen), "--limit", "4", "--json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["config"]["data"]["split"] == "eval_source" and other["config"]["data"]["dialogues"] == 4
    assert {r["reference"] for r in other["rows"]} == {f"hello {i}" for i in range(4)}
    assert load_result(f"lapdog-test/{result['name']}")["metrics"] == result["metrics"]
