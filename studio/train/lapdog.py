"""LAPDOG (Huang et al., EMNLP 2023) on a causal LM with LoRA: two stages in one job.

Stage 1, closed-book: the SFT path (`build_sft_trainer`) trains the generator's LoRA on persona
dialogues with no stories. Stage 2, joint: the LoRA keeps training (TRL's SFTTrainer) with the top-k
stories in its input, and after every generator step the retriever's query encoder takes one step of its
own: for a few training examples, k candidate stories (a fraction swapped for random ones: candidate
augmentation) each give one greedy reply (all of a step's candidates in one batched generate, up to
`retrieval.candidate_max_new_tokens` tokens, by default as long as evaluation replies), scored against the
gold reply with F1 + ROUGE-L + BLEU (BLEU divided by its L2 norm over the candidates); the encoder minimises
KL(softmax(metric/τ_gold) ‖ softmax(score/τ_score)) with query embeddings computed with gradient.

Adaptations (the paper trains a shared Contriever and re-embeds the corpus every 1,200 steps):
- the story side is frozen: only the query encoder learns, so the cached story index never goes stale
  and needs no refresh;
- scores are cosine similarities (normalised sentence-transformers embeddings), not dot/√d;
- the generator's stage-2 inputs carry the top-k stories of the query encoder as it learns, as in the
  paper: every `retrieval.refresh_steps` steps (0: never, the stories of the start of stage 2) each
  training row's stories are retrieved again (each distinct query encoded once: a persona serves every turn
  of its dialogue; `StoryInputs`, read and tokenized when a batch is drawn);
  how many rows changed is charted, and each checkpoint records the stories in use so a resume trains on
  the same data; the retriever's candidates come from the query encoder as it learns.
Checkpoints: stage 1 in runs/<run>/checkpoints, stage 2 in runs/<run>/stage2/checkpoints (each with the
query encoder and its optimizer). Outputs: adapter/, retriever/ (a sentence-transformers folder + lapdog.json).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path

from studio.persona import dialogue_rows, persona_data, settings
from studio.train.progress import make_callback, save_adapter, train_from
from studio.runs import CANCELLED, DONE, last_checkpoint

# ---- the retriever's training signal -----------------------------------------------------------------
def reply_scores(replies: list[str], gold: str) -> list[float]:
    """F1 + ROUGE-L (0–1) + BLEU divided by the L2 norm of the candidates' BLEU (all zero stays zero)."""
    from studio.metrics import sentence_scores

    rows = [sentence_scores(r, gold) for r in replies]
    bleu = [r["bleu"] for r in rows]
    norm = math.sqrt(sum(b * b for b in bleu))
    return [r["f1"] / 100 + r["rougeL"] / 100 + (b / norm if norm > 0 else 0.0) for r, b in zip(rows, bleu)]


def kl_target(scores, tau_gold: float):
    """softmax(metric / τ_gold): the distribution over candidates the retriever is pulled towards."""
    import torch

    return torch.softmax(torch.as_tensor(scores, dtype=torch.float32) / tau_gold, dim=-1)


def retriever_loss(query_vecs, story_vecs, target, tau_score: float):
    """KL(target ‖ softmax(q·p / τ_score)), averaged over examples. query_vecs (n×d) carry the gradient,
    story_vecs (n×k×d) are the frozen index's."""
    import torch

    logits = torch.einsum("nd,nkd->nk", query_vecs, story_vecs) / tau_score
    return torch.nn.functional.kl_div(torch.log_softmax(logits, -1), target, reduction="batchmean")


MAX_CANDIDATE_BATCH = 64  # prompts per generate call in the retriever step (k and retriever_batch go to 1,000 / 4,096)


def candidate_tokens(cfg: dict) -> int:
    """How long a stage-2 candidate reply may be: `candidate_max_new_tokens`, else the evaluation's
    `reply_max_new_tokens` (the same length, as before the key existed)."""
    return int(cfg.get("candidate_max_new_tokens") or cfg["reply_max_new_tokens"])


def entropy(p) -> float:
    import torch

    return float(-(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean())


class RetrieverLearner:
    """The query encoder, its optimizer, and one LAPDOG step against a generator."""

    def __init__(self, encoder, index, rows: list[dict], cfg: dict, tokenizer, seed: int = 42):
        import torch

        self.encoder, self.index, self.rows, self.cfg, self.tok, self.seed = encoder, index, rows, cfg, tokenizer, seed
        self.optimizer = torch.optim.AdamW(encoder.parameters(), lr=float(cfg["retriever_learning_rate"]))
        self.probe = rows[: min(32, len(rows))]
        self.first_top1 = self.top1(self.probe)

    def queries(self, rows) -> list[str]:
        from studio.persona import query_text

        return [query_text(r["persona"], r["history"], self.cfg["query"] == "persona+turn") for r in rows]

    def encode(self, texts: list[str], grad: bool):
        import torch

        features = self.encoder.preprocess(texts)
        features = {k: v for k, v in features.items() if isinstance(v, torch.Tensor)}
        with torch.set_grad_enabled(grad):
            return self.encoder(features)["sentence_embedding"]

    def query_vectors(self, rows, chunk: int = 64):
        """Each row's query vector, no gradient: each distinct query encoded once (a persona is the query of all
        its dialogue's turns: 640 personas for 5,040 ConvAI2 rows), in chunks of similar length (the encoder pads
        a batch to its longest query; one batch of every row pads all to the longest of all)."""
        import numpy as np
        import torch

        texts = self.queries(rows)
        distinct = sorted(set(texts), key=lambda t: (len(t), t))
        with torch.no_grad():
            vectors = np.concatenate([self.encode(distinct[i:i + chunk], grad=False).numpy()
                                      for i in range(0, len(distinct), chunk)])
        where = {t: i for i, t in enumerate(distinct)}
        return vectors[[where[t] for t in texts]]

    def top1(self, rows) -> list[int]:
        return [ids[0] for ids in self.index.search(self.query_vectors(rows), 1)[1]]

    def candidates(self, rows, rng: random.Random) -> list[list[int]]:
        k, n = int(self.cfg["k"]), len(self.index.corpus)
        q = self.query_vectors(rows)
        out = []
        for ids in self.index.search(q, k)[1]:
            n_random = int(round(float(self.cfg["candidate_random"]) * k))
            if n_random:
                pool = [i for i in range(n) if i not in ids]
                for slot in rng.sample(range(k), n_random):
                    ids[slot] = pool.pop(rng.randrange(len(pool)))
            out.append(ids)
        return out

    def candidate_prompts(self, rows, cands, budget: int) -> list[str]:
        """One prompt per (example, candidate story): persona + that story alone + history, as the generator reads it."""
        from studio.inference import chat_prompt
        from studio.persona import persona_messages

        stories = self.index.corpus.stories
        return [chat_prompt(self.tok, persona_messages(self.tok, row["persona"], [stories[i]], row["history"], budget)[0])
                for row, ids in zip(rows, cands) for i in ids]

    def candidate_replies(self, model, prompts: list[str], batch_size: int | None = None) -> list[str]:
        """Greedy replies to the candidate prompts of a step: one batched generate (left padding) over up to
        `MAX_CANDIDATE_BATCH` of them (every candidate of a usual step: retriever_batch × k), or `batch_size` at a
        time; up to `candidate_max_new_tokens` tokens (unset: `reply_max_new_tokens`)."""
        from studio.inference import generate

        was_training = model.training
        model.eval()
        try:
            return generate(model, self.tok, prompts, candidate_tokens(self.cfg),
                            batch_size=batch_size or max(1, min(len(prompts), MAX_CANDIDATE_BATCH)))
        finally:
            model.train(was_training)

    def targets(self, rows, replies: list[str], k: int):
        """softmax(metric/τ_gold) over each example's k candidates (n×k), each reply cut at its first newline as
        the persona table scores replies (what comes after is never scored there, so it teaches nothing)."""
        import torch

        replies = [r.split("\n")[0].strip() for r in replies]
        return torch.stack([kl_target(reply_scores(replies[j * k:(j + 1) * k], row["reply"]), float(self.cfg["tau_gold"]))
                            for j, row in enumerate(rows)])

    def likelihood_targets(self, model, rows, prompts: list[str], k: int):
        """softmax(log p(gold reply | story)/τ_gold) over each example's k candidates (n×k): the generator's own
        likelihood of the gold reply with each story alone, teacher-forced (Atlas' perplexity distillation,
        REPLUG's LSR); at τ_gold 1 it is the posterior over the k stories given the reply. No generation."""
        import torch

        from studio.inference import continuation_logprobs

        was_training = model.training
        model.eval()
        try:
            logp = continuation_logprobs(model, self.tok, prompts, [row["reply"] for row in rows for _ in range(k)])
        finally:
            model.train(was_training)
        return torch.stack([kl_target(logp[j * k:(j + 1) * k], float(self.cfg["tau_gold"])) for j in range(len(rows))])

    def update(self, rows, cands, target) -> float:
        """The query encoder's step: queries encoded with gradient, KL to the target, AdamW."""
        import torch

        q = self.encode(self.queries(rows), grad=True)
        p = torch.as_tensor(self.index.vectors([i for ids in cands for i in ids])).view(len(rows), len(cands[0]), -1)
        loss = retriever_loss(q, p, target, float(self.cfg["tau_score"]))
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def step(self, model, step: int, budget: int) -> dict:
        """One retriever update: greedy reply per single story and metric target (`signal: metric`, the paper's),
        or the gold reply's likelihood per single story (`signal: likelihood`); KL, AdamW step."""
        rng = random.Random(self.seed * 100003 + step)  # the same examples again after a resume
        rows = rng.sample(self.rows, min(int(self.cfg["retriever_batch"]), len(self.rows)))
        cands = self.candidates(rows, rng)
        prompts = self.candidate_prompts(rows, cands, budget)
        if self.cfg.get("signal", "metric") == "likelihood":
            target = self.likelihood_targets(model, rows, prompts, len(cands[0]))
        else:
            target = self.targets(rows, self.candidate_replies(model, prompts), len(cands[0]))
        loss = self.update(rows, cands, target)
        return {"retriever/loss": loss, "retriever/target_entropy": entropy(target)}

    def topk(self, rows) -> list[list[int]]:
        """Each row's top-k stories (corpus positions) by the query encoder as it is now."""
        return [[int(i) for i in ids] for ids in self.index.search(self.query_vectors(rows), int(self.cfg["k"]))[1]]

    def top1_change_rate(self) -> float:
        now = self.top1(self.probe)
        return sum(a != b for a, b in zip(now, self.first_top1)) / max(1, len(now))

    def save(self, folder: Path, optimizer: bool = True) -> None:
        import torch

        self.encoder.save(str(folder / "retriever"))
        if optimizer:
            torch.save(self.optimizer.state_dict(), folder / "retriever_optim.pt")

    def load_state(self, folder: Path) -> None:
        import torch

        if (folder / "retriever_optim.pt").exists():
            self.optimizer.load_state_dict(torch.load(folder / "retriever_optim.pt"))


class StoryInputs:
    """Stage 2's training rows as the generator reads them: persona + each row's current top-k stories +
    history + the gold reply, through the chat template (as TRL renders a messages row), tokenized when a
    batch is drawn, so a refresh (`refresh`) changes what the generator trains on from the next batches on."""

    FILE = "stage2_inputs.json"  # in each stage-2 checkpoint: the stories in use, for a resume

    def __init__(self, rows: list[dict], story_ids: list[list[int]], stories: list[dict], tokenizer, budget: int,
                 max_length: int | None):
        self.rows, self.ids, self.stories, self.tok = rows, story_ids, stories, tokenizer
        self.budget, self.max_length, self.refreshed_at = budget, max_length, 0

    def __len__(self) -> int:
        return len(self.rows)

    def messages(self, i: int) -> list[dict]:
        from studio.persona import persona_messages

        row = self.rows[i]
        messages = persona_messages(self.tok, row["persona"], [self.stories[j] for j in self.ids[i]], row["history"],
                                    self.budget)[0]
        return [*messages, {"role": "assistant", "content": row["reply"]}]

    def __getitem__(self, i: int) -> dict:
        ids = self.tok.apply_chat_template(self.messages(i), tokenize=True, return_dict=True)["input_ids"]
        return {"input_ids": list(ids[: self.max_length] if self.max_length else ids)}

    def refresh(self, story_ids: list[list[int]], step: int) -> int:
        """New top-k stories for every row; returns how many rows' stories changed."""
        changed = sum(a != b for a, b in zip(self.ids, story_ids))
        self.ids, self.refreshed_at = story_ids, step
        return changed

    def save(self, folder: Path) -> None:
        (folder / self.FILE).write_text(json.dumps({"refreshed_at": self.refreshed_at, "stories": self.ids}),
                                        encoding="utf-8")

    def load(self, folder: Path) -> bool:
        path = folder / self.FILE
        if not path.exists():
            return False
        saved = json.loads(path.read_text("utf-8"))
        if len(saved["stories"]) != len(self.rows):
            return False
        self.ids, self.refreshed_at = [list(map(int, ids)) for ids in saved["stories"]], int(saved["refreshed_at"])
        return True


def make_refresh_callback(learner: RetrieverLearner, inputs: StoryInputs, job, every: int):
    """Every `every` steps, the generator's stories come again from the query encoder as it is then; the count
    of rows whose stories changed goes to the chart. Each checkpoint records the stories in use."""
    from transformers import TrainerCallback

    class RefreshCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if job.stop_event.is_set() or not every or state.global_step % every or state.global_step >= state.max_steps:
                return
            changed = inputs.refresh(learner.topk(inputs.rows), state.global_step)
            job.emit("metrics", step=state.global_step, **{"retriever/inputs_changed": changed,
                                                           "retriever/inputs_changed_share": changed / len(inputs)})
            job.log(f"stage 2 step {state.global_step}: generator inputs refreshed from the query encoder, "
                    f"{changed}/{len(inputs)} rows' stories changed")

        def on_save(self, args, state, control, **kwargs):
            inputs.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return RefreshCallback()


def make_retriever_callback(learner: RetrieverLearner, job, budget: int):
    """Runs the retriever step after each generator step; logs its metrics; saves it with each checkpoint.

    Placed before the job's own callback, so a checkpoint holds the encoder before it is marked complete.
    """
    from transformers import TrainerCallback

    class RetrieverCallback(TrainerCallback):
        def __init__(self):
            self.logged: list[dict] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if job.stop_event.is_set():
                return
            self.logged.append(learner.step(model, state.global_step, budget))
            if state.global_step % max(1, int(args.logging_steps)) == 0 or state.global_step == state.max_steps:
                row = {key: sum(m[key] for m in self.logged) / len(self.logged) for key in self.logged[0]}
                row["retriever/top1_change_rate"] = learner.top1_change_rate()
                job.emit("metrics", step=state.global_step, **row)
                self.logged.clear()

        def on_save(self, args, state, control, **kwargs):
            learner.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return RetrieverCallback()


class StageView:
    """The job as one stage sees it: steps offset so both stages draw one progress bar and one chart."""

    def __init__(self, job, offset: int, total: int):
        self._job, self._offset, self._total = job, offset, total

    def emit(self, type: str, **data) -> None:
        if isinstance(data.get("step"), int):
            data["step"] += self._offset
        if type == "progress":
            data["total"] = self._total
        self._job.emit(type, **data)

    def __getattr__(self, name):
        return getattr(self._job, name)


# ---- the two stages ------------------------------------------------------------------------------------
def stage_recipe(recipe, steps: int, **train):
    r = copy.deepcopy(recipe)
    r.train.update(max_steps=steps, **train)
    return r


def run_stage1(job, recipe, cfg, resume: bool):
    from studio.train.common import train_job
    from studio.train.sft import build_sft_trainer

    total = cfg["stage1_steps"] + cfg["stage2_steps"]
    view = StageView(job, 0, total)
    view.log(f"stage 1/2, closed-book SFT: {cfg['stage1_steps']} steps")
    trainer, tokenizer, data = build_sft_trainer(stage_recipe(recipe, cfg["stage1_steps"]), job.run_dir, view.log,
                                                 [make_callback(view)])
    train_job(job, trainer, resume)  # the parameter report, then training from the last checkpoint on a resume
    return trainer, tokenizer, data


def build_stage2(job, recipe, cfg, learner: RetrieverLearner, rows, tokenizer, stage1_adapter: Path,
                 checkpoint: Path | None = None):
    """The stage-1 adapter, trainable, on a fresh base; SFT rows carrying each persona's top-k stories (those of
    `checkpoint` on a resume, else the query encoder's now), read through `StoryInputs` so they can change."""
    import torch
    from peft import PeftModel
    from trl import SFTTrainer

    from studio.models import load_model
    from studio.train.common import quiet_trainer, resolve_fast_defaults

    r2 = stage_recipe(recipe, cfg["stage2_steps"], eval_strategy="no", load_best_model_at_end=False)
    model = load_model(r2.model_config(), trust_remote_code=bool(r2.train.get("trust_remote_code")))
    model = PeftModel.from_pretrained(model, str(stage1_adapter), is_trainable=True)
    budget = int(r2.train.get("max_length") or 1024) - int(cfg["reply_max_new_tokens"])
    max_length = r2.train.get("max_length")
    inputs = StoryInputs(rows, [], learner.index.corpus.stories, tokenizer, budget,
                         int(max_length) if max_length else None)
    if not (checkpoint and inputs.load(checkpoint)):
        inputs.ids = learner.topk(rows)
    for note in resolve_fast_defaults(r2, on_gpu=torch.cuda.is_available()):
        job.log(note)
    args, notes = r2.training_config(job.run_dir / "stage2" / "checkpoints")
    for note in notes:
        job.log(note)
    args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}  # StoryInputs tokenizes
    from datasets import Dataset

    # TRL takes only a `datasets.Dataset`; the Trainer draws its batches from `train_dataset` when training starts,
    # so the trainer is built on the first row and then reads every row through StoryInputs
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([inputs[0]]),
                         processing_class=tokenizer)
    trainer.train_dataset = inputs
    quiet_trainer(trainer)
    return trainer, budget, inputs


def run_lapdog(job, resume: bool = False) -> dict:
    from studio.models import folder_size
    from studio.retrieval import check_k, load_embedder, load_retriever
    from studio.train.common import write_summary

    recipe, run_dir = job.recipe, job.run_dir
    cfg = settings(recipe)
    started = time.time()
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    # The corpus and its index first: a bad corpus or embedder fails before any training.
    corpus_source = str(cfg["corpus"] or "")
    job.log(f"story index: {cfg['embedder']} over {corpus_source or 'the bundled stories'}")
    retriever = load_retriever(corpus_source or None, cfg["embedder"])
    check_k(int(cfg["k"]), len(retriever.corpus))
    job.log(f"story index: {len(retriever.corpus)} stories ({'cached' if retriever.index.from_cache else 'built'}); "
            "story side frozen, only the query encoder trains")

    stage1_adapter = run_dir / "stage1" / "adapter"
    s1 = cfg["stage1_steps"]
    if resume and (stage1_adapter / "adapter_config.json").exists():
        job.log("stage 1 already finished: resuming stage 2")
        from studio.models import load_tokenizer

        tokenizer = load_tokenizer(str(stage1_adapter))
        data = persona_data(recipe)
    else:
        trainer1, tokenizer, data = run_stage1(job, recipe, cfg, resume)
        if job.stop_event.is_set():
            job.log(f"stopped in stage 1 at step {trainer1.state.global_step}; resume to continue")
            summary = write_summary(job, trainer1, CANCELLED, started, 0, {"stage": 1})
            job.emit("status", status=CANCELLED)
            return summary
        save_adapter(trainer1, tokenizer, stage1_adapter)  # atomic: its presence means stage 1 finished
    rows = dialogue_rows(data.splits["train"])

    view = StageView(job, s1, s1 + cfg["stage2_steps"])
    view.log(f"stage 2/2, joint generator + retriever: {cfg['stage2_steps']} steps, k={cfg['k']}, "
             f"τ_score {cfg['tau_score']}, τ_gold {cfg['tau_gold']}, {cfg['candidate_random']:.0%} random candidates")
    checkpoint = last_checkpoint(run_dir / "stage2") if resume else None
    encoder_source = str(checkpoint / "retriever") if checkpoint and (checkpoint / "retriever").is_dir() else cfg["embedder"]
    encoder = load_embedder(encoder_source, fresh=True)
    learner = RetrieverLearner(encoder, retriever.index, rows, cfg, tokenizer, int(recipe.train.get("seed", 42)))
    if checkpoint:
        learner.load_state(checkpoint)
        job.log(f"resuming stage 2 from {checkpoint.name}")
    before = {row["persona"]: retriever.search([row["persona"]], 3)[0] for row in rows[:3]}
    trainer, budget, inputs = build_stage2(view, recipe, cfg, learner, rows, tokenizer, stage1_adapter, checkpoint)
    every = int(cfg["refresh_steps"] or 0)
    view.log(f"stage 2 generator inputs: each row's top-{cfg['k']} stories from the query encoder, "
             + (f"refreshed every {every} steps" if every else "fixed at the start of stage 2 (refresh_steps 0)")
             + (f" (as of step {s1 + inputs.refreshed_at}, from {checkpoint.name})" if checkpoint and inputs.refreshed_at else ""))
    trainer.add_callback(make_retriever_callback(learner, view, budget))
    trainer.add_callback(make_refresh_callback(learner, inputs, view, every))
    trainer.add_callback(make_callback(view))
    output = train_from(trainer, checkpoint)
    lm_losses = [h["loss"] for h in job.history if h.get("loss") is not None]  # both stages, as charted
    extra = {"stage1_steps": s1, "stage2_steps": cfg["stage2_steps"], "steps": s1 + trainer.state.global_step,
             **({"first_loss": lm_losses[0]} if lm_losses else {}),
             "planned_steps": s1 + cfg["stage2_steps"],
             "train_runtime_s": round(output.metrics.get("train_runtime", 0.0), 3)}
    if job.stop_event.is_set():
        job.log(f"stopped in stage 2 at step {s1 + trainer.state.global_step}; resume to continue")
        summary = write_summary(job, trainer, CANCELLED, started, 0, extra)
        job.emit("status", status=CANCELLED)
        return summary

    adapter_dir = run_dir / "adapter"
    save_adapter(trainer, tokenizer, adapter_dir)
    learner.save(run_dir, optimizer=False)
    meta = {"story_embedder": cfg["embedder"], "corpus": corpus_source or None, "k": int(cfg["k"]),
            "refresh_steps": every,
            "query": cfg["query"], "story_side": "frozen", "tau_score": cfg["tau_score"], "tau_gold": cfg["tau_gold"]}
    (run_dir / "retriever" / "lapdog.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    trained = load_retriever(corpus_source or None, cfg["embedder"], run_dir)
    extra.update(adapter_dir=str(adapter_dir), adapter_bytes=folder_size(adapter_dir),
                 retriever_dir=str(run_dir / "retriever"), top1_change_rate=learner.top1_change_rate(),
                 retrieval_examples=[{"persona": p, "before": [s["id"] for s in b],
                                      "after": [s["id"] for s in trained.search([p], 3)[0]]}
                                     for p, b in before.items()])
    summary = write_summary(job, trainer, DONE, started, 0, extra)
    job.emit("status", status=DONE)
    return summary
