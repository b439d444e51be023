"""A listwise linear model: each item of a list (a mention's candidates) scores features @ w, and w
is fitted so that each list's gold item wins a softmax over its list (cross-entropy + L2). Full-batch
L-BFGS in float64: equal input, equal weights. The candidates ranker (gemel.search.candidates) and the
learned fusion of the LLM's scores (gemel.link.fusion) are both one."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fit(lists: Sequence[np.ndarray], gold: Sequence[int], n_features: int, l2: float = 1e-3,
        steps: int = 200) -> np.ndarray:
    """Weights [n_features] over lists of item features [n_i, n_features]; `gold[i]` is the gold item's position in
    list i, or -1 when the gold is absent. Lists without their gold or with a single item teach
    nothing about ranking and are left out; with none left the weights are 0."""
    import torch

    usable = [(x, g) for x, g in zip(lists, gold) if len(x) > 1 and g >= 0]
    w = torch.zeros(n_features, dtype=torch.float64, requires_grad=True)
    if not usable:
        return w.detach().numpy()
    width = max(len(x) for x, _ in usable)
    x = torch.zeros(len(usable), width, n_features, dtype=torch.float64)
    valid = torch.zeros(len(usable), width, dtype=torch.bool)
    for i, (f, _) in enumerate(usable):
        x[i, :len(f)] = torch.from_numpy(np.asarray(f, dtype=np.float64))
        valid[i, :len(f)] = True
    target = torch.tensor([g for _, g in usable])
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (x @ w).masked_fill(~valid, float("-inf"))
        loss = torch.nn.functional.cross_entropy(logits, target) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()
