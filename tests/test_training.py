"""The mapper's training loop on a tiny random Llama: the lr schedule counted in optimizer steps
under gradient accumulation, accumulation against one large batch, and the best mapper kept by
dev accuracy, each at more than one setting, against values worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from gemel.config import TrainParams
from gemel.generation.model import Gemel
from gemel.generation.prompt import IMAGE, Example
from gemel.generation.training import optimizer_steps, train

VOCAB, EOS, PAD, DIM, K = 48, 1, 0, 8, 2


@pytest.fixture(scope="module")
def llm():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128,
                         eos_token_id=EOS, pad_token_id=PAD, bos_token_id=2, initializer_range=0.4)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval().requires_grad_(False)


def make_examples(n: int, seed: int = 0, prompt_lengths: tuple[int, ...] = (6,)) -> tuple[list[Example], np.ndarray]:
    """n prompts, each with its own image (K slots first) and a 3-token answer ending in EOS."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = rng.integers(3, VOCAB, size=prompt_lengths[i % len(prompt_lengths)]).tolist()
        out.append(Example(f"e{i}", [IMAGE] * K + text, [i], rng.integers(3, VOCAB, size=2).tolist() + [EOS]))
    return out, rng.normal(size=(n, DIM)).astype(np.float32)


def model_for(llm) -> Gemel:
    torch.manual_seed(1)
    return Gemel(llm, DIM, K)


@pytest.mark.parametrize("n, batch_size, grad_accum, epochs, warmup, factors", [
    # 7 batches an epoch in groups of 3: 3 optimizer steps an epoch, 6 in all; warm-up ceil(0.5 * 6) = 3
    (7, 1, 3, 2, 0.5, [1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3]),
    # 4 batches an epoch in pairs: 2 steps an epoch, 6 in all; warm-up ceil(0.2 * 6) = 2, then 4 decaying
    (7, 2, 2, 3, 0.2, [1 / 2, 1, 1, 3 / 4, 2 / 4, 1 / 4]),
    # no accumulation, no warm-up: 3 steps, decaying from the first
    (3, 1, 1, 1, 0.0, [1, 2 / 3, 1 / 3]),
])
def test_lr_schedule_counts_optimizer_steps(llm, n, batch_size, grad_accum, epochs, warmup, factors) -> None:
    """The lr of each optimizer step follows warm-up then decay over the optimizer steps, not the
    batches (the original counted batches while stepping once per accumulation, so its warm-up
    never ended); the first step's lr is not 0."""
    examples, features = make_examples(n)
    p = TrainParams(epochs=epochs, lr=1e-3, batch_size=batch_size, grad_accum=grad_accum, warmup=warmup, seed=0)
    hist = train(model_for(llm), examples, features, PAD, p, progress=False)
    assert optimizer_steps(n, p) == len(factors) == len(hist.loss)
    assert [h["step"] for h in hist.loss] == list(range(1, len(factors) + 1))
    steps_per_epoch = len(factors) // epochs
    assert [h["epoch"] for h in hist.loss] == [1 + i // steps_per_epoch for i in range(len(factors))]
    assert [h["lr"] for h in hist.loss] == pytest.approx([1e-3 * f for f in factors], rel=1e-9)


def test_accumulated_micro_batches_equal_one_large_batch(llm) -> None:
    """grad_accum micro-batches of one example make the same optimizer steps as batches of
    grad_accum examples (answers of equal length, so the mean of means is the mean): same losses,
    same mapper. No clipping, so the gradients themselves must agree."""
    examples, features = make_examples(6, prompt_lengths=(6, 9, 7))
    runs = []
    for batch_size, grad_accum in ((1, 3), (3, 1), (2, 1)):
        model = model_for(llm)
        start = model.mapper.linear.weight.detach().clone()
        p = TrainParams(epochs=2, lr=1e-2, batch_size=batch_size, grad_accum=grad_accum, warmup=0.0,
                        grad_clip=None, seed=3)
        hist = train(model, examples, features, PAD, p, progress=False)
        runs.append(([h["loss"] for h in hist.loss], model.mapper.linear.weight.detach() - start))
    (loss_a, delta_a), (loss_b, delta_b), (loss_c, delta_c) = runs
    assert len(loss_a) == len(loss_b) == 4
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert float((delta_a - delta_b).norm() / delta_b.norm()) < 1e-4
    # Batches of two are other steps (6 of them, other groups): a different mapper, so the check can fail.
    assert len(loss_c) == 6 and float((delta_c - delta_b).norm() / delta_b.norm()) > 1e-2


@pytest.mark.parametrize("eval_every, accuracies, steps, best", [
    (2, [0.2, 0.7, 0.5, 0.6], [2, 4, 6, 8], 4),
    (3, [0.4, 0.3, 0.9], [3, 6, 8], 8),  # the end of the epoch is evaluated too
    (5, [0.5, 0.5], [5, 8], 5),  # a tie keeps the earlier mapper
])
def test_best_mapper_by_dev_accuracy_is_kept(llm, eval_every, accuracies, steps, best) -> None:
    examples, features = make_examples(8)
    model = model_for(llm)
    scripted, snapshots = iter(accuracies), {}

    def evaluate() -> float:
        snapshots[len(snapshots)] = model.mapper.linear.weight.detach().clone()
        return next(scripted)

    p = TrainParams(epochs=1, lr=1e-2, batch_size=1, grad_accum=1, warmup=0.0, eval_every=eval_every, seed=0)
    hist = train(model, examples, features, PAD, p, evaluate, progress=False)
    assert [d["step"] for d in hist.dev] == steps and [d["accuracy"] for d in hist.dev] == accuracies
    assert hist.best_step == best and hist.best_accuracy == max(accuracies)
    assert torch.equal(model.mapper.linear.weight, snapshots[steps.index(best)])
    assert not torch.equal(model.mapper.linear.weight, snapshots[len(steps) - 1]) or best == steps[-1]


def test_zero_epochs_only_evaluates(llm) -> None:
    """The text-only case: nothing is trained, dev accuracy is still reported once."""
    examples, features = make_examples(4)
    model = model_for(llm)
    before = model.mapper.linear.weight.detach().clone()
    p = TrainParams(epochs=0, batch_size=2, seed=0)
    hist = train(model, examples, features, PAD, p, lambda: 0.25, progress=False)
    assert hist.loss == [] and hist.dev == [{"step": 0, "accuracy": 0.25}]
    assert torch.equal(model.mapper.linear.weight, before)
