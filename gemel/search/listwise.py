"""A listwise linear model: each item of a list (a mention's candidates) scores features @ w, and w
is fitted so that each list's gold item wins a softmax over its list (cross-entropy + L2). Full-batch
L-BFGS in float64: equal input, equal weights. The learned fusion of the LLM's scores
(gemel.link.fusion) is one; the candidates ranker (gemel.search.candidates) is one, or with
`fit_mlp`, one with a small hidden layer beside the linear part."""
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


def fit_mlp(lists: Sequence[np.ndarray], gold: Sequence[int], n_features: int, hidden: int, l2: float = 1e-3,
            steps: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
    """A listwise model with one hidden layer beside the linear part: score = x @ linear +
    tanh(x @ W1 + b1) @ w2, fitted as `fit` is (softmax over each list, L2, full-batch L-BFGS in
    float64, seeded start). The tanh units learn what a sum of features cannot, as "an alias seen
    in training counts unless the name also matches exactly". Features are standardised for the
    fit and the scaling folded back into the weights, so the returned model reads raw features.
    Items are scored packed (not padded to the longest list): pools vary from 1 to ~150 entities."""
    import torch

    usable = [(np.asarray(x, dtype=np.float64), g) for x, g in zip(lists, gold) if len(x) > 1 and g >= 0]
    zeros = {"linear": np.zeros(n_features), "W1": np.zeros((n_features, hidden)), "b1": np.zeros(hidden),
             "w2": np.zeros(hidden)}
    if not usable:
        return zeros
    x = torch.from_numpy(np.concatenate([f for f, _ in usable]))
    lengths = np.array([len(f) for f, _ in usable])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    width = int(lengths.max())
    # Row i of `index` holds list i's items, then the sentinel len(x), which scores -inf.
    index = np.full((len(usable), width), len(x), dtype=np.int64)
    for i, (s, n) in enumerate(zip(starts, lengths)):
        index[i, :n] = s + np.arange(n)
    index_t = torch.from_numpy(index)
    target = torch.tensor([g for _, g in usable])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    gen = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(n_features, hidden, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    b1 = torch.zeros(hidden, dtype=torch.float64, requires_grad=True)
    # Both layers start small and random: with w2 = 0 a problem without a linear signal sits at a saddle.
    w2 = (torch.randn(hidden, generator=gen, dtype=torch.float64) * 0.1).requires_grad_()
    wl = torch.zeros(n_features, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([wl, w1, b1, w2], max_iter=steps, line_search_fn="strong_wolfe")
    sentinel = torch.tensor([float("-inf")], dtype=torch.float64)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        scores = z @ wl + torch.tanh(z @ w1 + b1) @ w2
        logits = torch.cat([scores, sentinel])[index_t]
        loss = torch.nn.functional.cross_entropy(logits, target) + l2 * ((wl ** 2).sum() + (w1 ** 2).sum()
                                                                         + (w2 ** 2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # fold the standardisation in: (x - mu) / sd @ w = x @ (w / sd) - const
        return {"linear": (wl / sd).numpy(), "W1": (w1 / sd[:, None]).numpy(),
                "b1": (b1 - (mu / sd) @ w1).numpy(), "w2": w2.numpy()}
