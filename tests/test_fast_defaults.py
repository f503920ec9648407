"""Issue 4: the studio's speed defaults keep the maths."""

import pytest
import torch

from conftest import tiny_recipe
from studio.train.common import largest_divisor_at_most, resolve_fast_defaults


@pytest.mark.parametrize("micro,accum,cap,expect", [(1, 4, 8, (4, 1)), (1, 16, 8, (8, 2)), (2, 6, 8, (6, 2)),
                                                    (4, 4, 16, (16, 1)), (1, 7, 4, (1, 7)), (3, 1, 8, (3, 1))])
def test_auto_micro_batch_keeps_the_effective_batch(micro, accum, cap, expect):
    r = tiny_recipe(per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
                    **{"studio.max_micro_batch": cap})
    resolve_fast_defaults(r, on_gpu=False)
    got = (r.train["per_device_train_batch_size"], r.train["gradient_accumulation_steps"])
    assert got == expect and got[0] * got[1] == micro * accum


def test_memory_probe_limits_the_micro_batch_and_turns_on_checkpointing():
    r = tiny_recipe(per_device_train_batch_size=1, gradient_accumulation_steps=16)
    notes = resolve_fast_defaults(r, on_gpu=True, fits=lambda micro, ckpt: micro <= 4 or (ckpt and micro <= 2))
    assert (r.train["per_device_train_batch_size"], r.train["gradient_accumulation_steps"]) == (4, 4)
    assert r.train["activation_checkpointing"] is False and any("auto batch" in n for n in notes)
    r = tiny_recipe(per_device_train_batch_size=1, gradient_accumulation_steps=8)
    resolve_fast_defaults(r, on_gpu=True, fits=lambda micro, ckpt: ckpt and micro <= 2)
    assert r.train["activation_checkpointing"] is True and r.train["per_device_train_batch_size"] == 2


def test_each_choice_can_be_switched_off():
    r = tiny_recipe(activation_checkpointing=True, train_sampling_strategy="random", **{"studio.auto_batch": False})
    resolve_fast_defaults(r, on_gpu=False)
    assert r.train["activation_checkpointing"] is True and r.train["train_sampling_strategy"] == "random"
    assert (r.train["per_device_train_batch_size"], r.train["gradient_accumulation_steps"]) == (1, 4)
    assert largest_divisor_at_most(12, 5) == 4


def _examples_seen(recipe, tmp_path):
    """Every (input_ids, labels) the trainer feeds in one epoch, padding stripped."""
    from studio.train.sft import build_sft_trainer

    trainer, tok, _ = build_sft_trainer(recipe, tmp_path, log=lambda *_: None)
    seen, pad_positions_ok = [], True
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            keep = mask.bool()
            pad_positions_ok &= bool((labels[~keep] == -100).all())
            seen.append((tuple(ids[keep].tolist()), tuple(labels[keep].tolist())))
    return sorted(seen), pad_positions_ok, recipe.train["per_device_train_batch_size"]


def test_grouping_and_batching_change_no_example_tokens_or_labels(tmp_path):
    fast, ok_fast, micro_fast = _examples_seen(tiny_recipe(), tmp_path / "a")  # studio defaults: 4×1, grouped
    plain, ok_plain, micro_plain = _examples_seen(
        tiny_recipe(train_sampling_strategy="random", **{"studio.auto_batch": False}), tmp_path / "b")
    assert (micro_fast, micro_plain) == (4, 1)
    assert ok_fast and ok_plain
    assert len(fast) == 52 and fast == plain  # the same examples, token for token, label for label


def test_grouped_batches_have_less_padding(tmp_path):
    from studio.train.sft import build_sft_trainer

    def padding(recipe, where):
        trainer, _, _ = build_sft_trainer(recipe, where, log=lambda *_: None)
        masks = [b["attention_mask"] for b in trainer.get_train_dataloader()]
        return sum(int((m == 0).sum()) for m in masks) / sum(m.numel() for m in masks)

    torch.manual_seed(0)
    grouped = padding(tiny_recipe(), tmp_path / "g")
    random = padding(tiny_recipe(train_sampling_strategy="random"), tmp_path / "r")
    assert grouped < random


@pytest.mark.parametrize("micro,accum,world,expect", [(1, 4, 2, (2, 1)), (1, 16, 2, (8, 1)), (4, 1, 4, (1, 1)),
                                                      (2, 8, 2, (8, 1)), (1, 6, 4, (1, 6))])
def test_auto_micro_batch_keeps_the_effective_batch_across_processes(monkeypatch, micro, accum, world, expect):
    """micro × accumulation × processes = the recipe's effective batch (or unchanged when it can't split)."""
    import studio.train.common as common

    r = tiny_recipe(per_device_train_batch_size=micro, gradient_accumulation_steps=accum)
    monkeypatch.setattr(common, "world_size", lambda: world)  # WORLD_SIZE itself would start torch.distributed
    notes = resolve_fast_defaults(r, on_gpu=False)
    got = (r.train["per_device_train_batch_size"], r.train["gradient_accumulation_steps"])
    assert got == expect
    if (micro * accum) % world == 0:
        assert got[0] * got[1] * world == micro * accum
    else:
        assert any("does not split across" in n for n in notes)
    assert r.train["ddp_find_unused_parameters"] is False
