"""The mapper's optimisation loop: AdamW, linear warm-up then decay, clipping, accumulation,
dev accuracy every few steps, and the best mapper kept. The train stage around it (which mentions
train and which evaluate, the text-only case, the frozen-LLM check) is gemel.link.fit."""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from gemel.config import TrainParams
from gemel.generation.model import Gemel
from gemel.generation.prompt import Example, collate


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based). Counted in optimizer steps,
    not batches, so warm-up ends where it should (the original counted batches while stepping once
    per accumulation, so its warm-up never ended), and the first step's lr is not 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the LLM's forward and backward passes, None for plain fp32. `auto` is
    bf16 on a GPU and fp32 on a CPU (where bf16 is fast only with AVX512-BF16 or AMX, and slow
    without). The mapper's weights and AdamW's moments stay fp32 either way."""
    choices = {"auto": torch.bfloat16 if device.type == "cuda" else None, "bf16": torch.bfloat16, "fp32": None}
    return choices[precision]  # the schema allows only these


def optimizer_steps(n_examples: int, p: TrainParams) -> int:
    return math.ceil(math.ceil(n_examples / p.batch_size) / p.grad_accum) * p.epochs


LOSS_COLUMNS = ("step", "epoch", "loss", "lr")  # train_loss.csv, one row per optimizer step


@dataclass
class History:
    loss: list[dict[str, float]] = field(default_factory=list)  # per optimizer step: LOSS_COLUMNS
    dev: list[dict[str, float]] = field(default_factory=list)  # per evaluation
    best_accuracy: float = -1.0
    best_step: int = 0
    examples_per_s: float = 0.0


def train(model: Gemel, examples: Sequence[Example], features, pad_id: int, p: TrainParams,
          evaluate: Callable[[], float] | None = None, progress: bool = True) -> History:
    """Fit the mapper's input standardisation on the training images, then train `model.mapper` in
    place; on return it holds the best mapper by dev accuracy
    (the last one when there is no dev evaluation)."""
    rows = sorted({r for e in examples for r in e.images if r >= 0})
    if rows:  # the mapper's input standardisation comes from the training images
        model.mapper.fit(torch.from_numpy(features[rows]).to(model.device))
    torch.manual_seed(p.seed)
    gen = torch.Generator().manual_seed(p.seed)
    opt = torch.optim.AdamW(model.mapper.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    total = optimizer_steps(len(examples), p)
    warmup = math.ceil(p.warmup * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warmup, total))
    hist = History()
    best_state = {k: v.detach().clone() for k, v in model.mapper.state_dict().items()}
    step, seen, t0 = 0, 0, time.perf_counter()
    amp = autocast_dtype(p.precision, model.device)

    def checkpoint() -> None:
        nonlocal best_state
        if evaluate is None:
            return
        acc = evaluate()
        hist.dev.append({"step": step, "accuracy": acc})
        if acc > hist.best_accuracy:
            hist.best_accuracy, hist.best_step = acc, step
            best_state = {k: v.detach().clone() for k, v in model.mapper.state_dict().items()}

    bar = tqdm(total=total, desc="train", unit="step", disable=not progress)
    for epoch in range(p.epochs):
        order = torch.randperm(len(examples), generator=gen).tolist()
        batches = [order[i:i + p.batch_size] for i in range(0, len(order), p.batch_size)]
        for g in range(0, len(batches), p.grad_accum):
            group = batches[g:g + p.grad_accum]
            opt.zero_grad(set_to_none=True)
            losses = []
            for idx in group:
                batch = collate([examples[i] for i in idx], features, pad_id)
                with torch.autocast(model.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                    loss = model.loss(batch, p.demo_image_grad)
                (loss / len(group)).backward()
                losses.append(loss.item())
                seen += len(idx)
            if p.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.mapper.parameters(), p.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            step += 1
            hist.loss.append({"step": step, "epoch": epoch + 1, "loss": sum(losses) / len(losses), "lr": lr})
            bar.update(1)
            bar.set_postfix(loss=f"{hist.loss[-1]['loss']:.3f}")
            if step % p.eval_every == 0:
                checkpoint()
        if not hist.dev or hist.dev[-1]["step"] != step:
            checkpoint()  # and at the end of every epoch
    if p.epochs == 0:
        checkpoint()  # nothing trained (e.g. the text-only ablation): still report dev accuracy
    bar.close()
    hist.examples_per_s = seen / max(1e-9, time.perf_counter() - t0)
    if evaluate is not None:
        model.mapper.load_state_dict(best_state)
    return hist
