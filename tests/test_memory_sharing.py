"""Issue 34, item 11: evaluation reports read the models the process-wide cache holds, never copies of their own,
and leave them as they found them (no adapter on or off, no weight or flag changed); the cache's default budget.

Tiny model and a 10-step run: seconds, offline. The whole app's memory over an afternoon on SmolLM2 is measured by
`benchmarks/app_memory.py` (docs/performance.md, "Memory over an afternoon").
"""

import shutil

import pytest

from conftest import runs_env, tiny_recipe
from studio.model_cache import CACHE, ModelCache, default_limit, limit_bytes, shared_weights_copy

TASK = "quote_authors"  # the bundled lm-eval task (assets/lm_eval), offline


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from studio import jobs

    with runs_env(tmp_path_factory.mktemp("sharing") / "runs") as runs:
        job = jobs.start_job(tiny_recipe(max_steps=10, save_steps=100, eval_strategy="no", learning_rate=5e-3),
                             runs_dir=runs, run_name="tiny-shared")
        assert job.wait(300) and job.status == "done", job.error
        yield job.run_dir
    CACHE.drop()


@pytest.fixture
def cache():
    CACHE.drop()
    yield CACHE
    CACHE.drop()


def _snapshot(model):
    """What a reader must never change on a cached model: its module types, parameters (storage and values) and
    flags, and its train/eval mode."""
    return ([(n, type(m).__name__, m.training) for n, m in model.named_modules()],
            [(n, p.data_ptr(), p.requires_grad, float(p.detach().double().sum())) for n, p in model.named_parameters()])


def test_lm_eval_runs_on_the_cached_model_with_lm_evals_own_numbers(run, cache, monkeypatch):
    import lm_eval.models.huggingface as hf
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from studio.evaluate.harness import LM_EVAL_DIR, _lm_eval_task, run_lm_eval
    from studio.inference import load_for_inference, run_adapter
    from studio.models import resolve_model_path

    tuned = load_for_inference(str(run), cached=True)  # what Evaluate and chat already hold
    base = load_for_inference("embedded/tiny-llama", cached=True)
    before = _snapshot(tuned.model), _snapshot(base.model)
    handed = []

    class Spy(hf.HFLM):
        def __init__(self, pretrained, **kw):
            handed.append(pretrained)
            super().__init__(pretrained=pretrained, **kw)

    monkeypatch.setattr(hf, "HFLM", Spy)
    loads = cache.loads
    ours = run_lm_eval(run.name, [TASK], limit=4)[TASK]
    ours_base = run_lm_eval(run.name, [TASK], limit=4, adapter=False)[TASK]  # a run's base alone: the base's entry
    assert handed == [tuned.model, base.model] and cache.loads == loads  # nothing loaded: both were cache hits
    assert (_snapshot(tuned.model), _snapshot(base.model)) == before

    # the same numbers as lm-eval's own loader (its `peft=` for the adapter), which held a second copy
    def own(**model_args):
        out = simple_evaluate(model="hf", model_args={**model_args, "device": "cpu", "dtype": "float32"},
                              tasks=[_lm_eval_task(TASK)], limit=4, batch_size=8, log_samples=False,
                              verbosity="ERROR",
                              task_manager=TaskManager(include_path=str(LM_EVAL_DIR), include_defaults=False))
        return {k.split(",")[0]: v for k, v in out["results"][TASK].items() if isinstance(v, (int, float))}

    monkeypatch.setattr(hf, "HFLM", Spy.__mro__[1])
    path = resolve_model_path("embedded/tiny-llama")
    assert own(pretrained=path, peft=str(run_adapter(run))) == pytest.approx(ours)
    assert own(pretrained=path) == pytest.approx(ours_base)


def test_a_runs_base_alone_is_the_bases_one_entry(run, cache):
    from studio.inference import load_for_inference

    loads = cache.loads
    assert load_for_inference(str(run), adapter=False, cached=True) is load_for_inference("embedded/tiny-llama",
                                                                                          cached=True)
    assert cache.loads == loads + 1


def test_adapters_of_a_report_go_on_its_own_tree_over_the_cached_tensors(run, cache, tmp_path):
    """LAPDOG's table (stage-1 and final adapters) and DPO margins (the run and its reference) switch adapters:
    on a tree of their own whose weights are the cached base's tensors, so the cached model never sees it."""
    import torch

    from studio.evaluate.lapdog_table import _run_on_cached_base
    from studio.inference import load_for_inference
    from studio.metrics import margin_table, preference_margins

    base = load_for_inference("embedded/tiny-llama", cached=True)
    before, loads = _snapshot(base.model), cache.loads
    stage1 = tmp_path / "stage1"
    shutil.copytree(run / "adapter", stage1)
    model, tok = _run_on_cached_base(run, stage1)
    assert tok is base.tokenizer and cache.loads == loads  # a hit: the run's own entry was never loaded
    shared = {p.data_ptr() for p in base.model.parameters()}
    assert {p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n} <= shared  # no weight copied
    ids = torch.tensor([tok("Quote: Be yourself;")["input_ids"]])
    tuned = load_for_inference(str(run))  # the run loaded on its own, as the reports did before
    with torch.no_grad():
        model.set_adapter("stage1")
        want = tuned.model(input_ids=ids).logits
        assert torch.allclose(model(input_ids=ids).logits, want, atol=1e-5)
        model.set_adapter("default")
        assert torch.allclose(model(input_ids=ids).logits, want, atol=1e-5)
        with model.disable_adapter():
            assert torch.allclose(model(input_ids=ids).logits, base.model(input_ids=ids).logits, atol=1e-6)
    assert _snapshot(base.model) == before

    rows = [{"prompt": "Quote: Be yourself;", "chosen": " everyone else is taken.", "rejected": " no."}]
    got, want = preference_margins(run.name, rows)[0], margin_table(tuned.model, tuned.tokenizer, rows)[0]
    assert {k: pytest.approx(v, abs=2e-4) if isinstance(v, float) else v for k, v in want.items()} == got
    assert _snapshot(base.model) == before and cache.loads == loads


def test_shared_weights_copy_shares_storage_and_keeps_ties(cache):
    from studio.inference import load_for_inference

    model = load_for_inference("embedded/tiny-llama", cached=True).model
    copy = shared_weights_copy(model)
    assert copy is not model and all(a.data_ptr() == b.data_ptr() and a is not b and not b.requires_grad
                                     for a, b in zip(model.parameters(), copy.parameters()))
    if model.config.tie_word_embeddings:
        assert copy.get_output_embeddings().weight is copy.get_input_embeddings().weight


def test_room_is_made_before_a_load_the_caller_can_size():
    import numpy as np

    cache = ModelCache(limit=3 << 20)
    for name in ("a", "b", "c"):
        cache.get(("x", name), lambda: np.zeros(1 << 20, dtype=np.uint8))
    seen = []
    cache.get(("x", "d"), lambda: seen.append([h["label"] for h in cache.held()]) or np.zeros(1 << 20, np.uint8),
              expect=1 << 20)
    assert seen == [["c", "b"]]  # "a" went before "d" was loaded, not after
    assert cache.get(("x", "d"), lambda: None) is not None and cache.hits == 1 and cache.loads == 4


def test_the_default_budget_is_a_tenth_of_the_ram(monkeypatch):
    monkeypatch.delenv("STUDIO_MODEL_CACHE_MB", raising=False)
    monkeypatch.setenv("STUDIO_MACHINE_RAM_MB", str(16 << 10))  # a 16 GB Space
    assert limit_bytes() == default_limit(16 << 30) == (16 << 30) // 10  # 1.6 GB
    assert default_limit(4 << 30) == 1 << 30  # at least 1 GB
    monkeypatch.setenv("STUDIO_MODEL_CACHE_MB", "4096")  # a user can still raise it
    assert limit_bytes() == 4096 << 20
