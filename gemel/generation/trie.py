"""The prefix trie of KB entity names that constrains decoding to valid names.

A dict-of-dicts trie (GENRE's) costs hundreds of bytes per node, GBs for Wikipedia. Here the trie
is four flat arrays (CSR), about 20 bytes per node, built level by level with numpy:

- nodes are numbered breadth-first, root = 0, and within a level by (parent, token);
- the children of node n are positions child_ptr[n]:child_ptr[n+1] of `child_tok` (sorted) and
  `child_node` (their node ids);
- value[n] is the index of the sequence that ends at n (for entity names: the node after EOS), else -1.

`Trie` knows only token sequences and saves to a plain .npz (no pickle);
gemel.generation.kb_trie adds the KB's names, tokenized for one LLM (`EntityTrie`).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gemel.atomic import atomic_path
from gemel.errors import GemelError

if TYPE_CHECKING:  # torch only for the decoder's masks: the trie stage never imports it (0.75 GiB)
    import torch

FORMAT = "gemel-trie/1"
ROOT = 0
_ARRAYS = ("child_ptr", "child_tok", "child_node", "value")


class TrieError(GemelError, ValueError):
    """Bad input to the trie (an empty name, a malformed file); the message names the record or file."""


class Trie:
    """A read-only prefix trie over token sequences; sequence i has value i."""

    def __init__(self, child_ptr: np.ndarray, child_tok: np.ndarray, child_node: np.ndarray, value: np.ndarray):
        self.child_ptr = child_ptr
        self.child_tok = child_tok
        self.child_node = child_node
        self.values = value
        # The largest token: allowed_mask checks it once against the vocabulary, not per call.
        self.max_token = int(child_tok.max()) if len(child_tok) else -1

    # ----- building

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> Trie:
        """Sequence i gets value i; of identical sequences the first index is kept."""
        lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        tokens = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
        return cls.from_flat(tokens, lengths)

    @classmethod
    def from_flat(cls, tokens: np.ndarray, lengths: np.ndarray) -> Trie:
        """The sequences concatenated in `tokens`, sequence i being the next lengths[i] tokens."""
        tokens = np.asarray(tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(tokens) != lengths.sum():
            raise TrieError(f"lengths sum to {lengths.sum()} but there are {len(tokens)} tokens")
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= 2**31):
            raise TrieError("token ids must be in [0, 2**31)")
        # int32 where it fits: at 7.4M names every array of the build is tens of millions long.
        tokens = tokens.astype(np.int32, copy=False)
        level = np.int32 if len(tokens) < 2**31 - 1 else np.int64  # node ids are below tokens + 1
        n = len(lengths)
        if n >= 2**31:
            raise TrieError(f"{n} sequences: values are int32")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        # Longest first: the sequences still going at depth d are then a prefix of `order`.
        order = np.argsort(-lengths, kind="stable")
        neg_len = -lengths[order]
        span = int(tokens.max()) + 1 if len(tokens) else 1
        node = np.zeros(n, dtype=np.int64)  # per sequence (in `order`): the node reached so far
        # Per level, each of its nodes' number of children (the next level's nodes per parent),
        # and the next level's tokens: child_ptr and child_tok, with no parent array of all nodes.
        counts, toks = [], []
        n_nodes, level_start, level_size = 1, 0, 1  # the root alone is level 0
        for depth in range(int(lengths.max()) if n else 0):
            k = int(np.searchsorted(neg_len, -depth, side="left"))  # sequences longer than depth
            tok = tokens[starts[order[:k]] + depth]
            # New nodes of this level = distinct (parent, token) pairs, numbered in sorted order,
            # so each parent's children are contiguous and sorted by token.
            keys, inverse = np.unique(node[:k] * span + tok, return_inverse=True)
            node[:k] = n_nodes + inverse.reshape(-1)
            counts.append(np.bincount(keys // span - level_start, minlength=level_size).astype(level))
            toks.append((keys % span).astype(np.int32))
            level_start, level_size = n_nodes, len(keys)
            n_nodes += len(keys)
        counts.append(np.zeros(level_size, dtype=level))  # the deepest level: leaves
        child_tok = np.concatenate(toks) if toks else np.zeros(0, np.int32)
        del toks
        # Breadth-first numbering: the children of n follow those of n-1.
        child_ptr = np.zeros(n_nodes + 1, dtype=node_dtype(n_nodes))
        np.cumsum(np.concatenate(counts), out=child_ptr[1:])
        del counts
        # In this layout child j is node j + 1; stored anyway so readers need not assume it.
        child_node = np.arange(1, n_nodes, dtype=node_dtype(n_nodes))
        # Each sequence's last node gets the smallest index among the sequences ending there.
        value = np.full(n_nodes, n, dtype=np.int32)  # n < 2**31, checked above
        np.minimum.at(value, node, order.astype(np.int32))
        value[value == n] = -1
        return cls(child_ptr, child_tok, child_node, value)

    # ----- size

    @property
    def num_nodes(self) -> int:
        return len(self.values)

    @property
    def num_values(self) -> int:
        """Distinct sequences stored (fewer than those given when some were identical)."""
        return int(np.count_nonzero(self.values >= 0))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())

    def max_depth(self) -> int:
        """The length of the longest sequence: levels below the root, walked breadth-first."""
        depth, frontier = 0, np.array([ROOT])
        while True:
            frontier = self.child_node[self._child_positions(frontier)[1]]
            if not len(frontier):
                return depth
            depth += 1

    # ----- single-node queries

    def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, nodes) of the children of `node`, tokens sorted; empty for -1 or a leaf."""
        if node < 0:
            return self.child_tok[:0], self.child_node[:0]
        lo, hi = self.child_ptr[node], self.child_ptr[node + 1]
        return self.child_tok[lo:hi], self.child_node[lo:hi]

    def step(self, node: int, token: int) -> int:
        """The child of `node` along `token`, or -1 (also from -1)."""
        if node < 0:
            return -1
        lo, hi = int(self.child_ptr[node]), int(self.child_ptr[node + 1])
        i = lo + int(np.searchsorted(self.child_tok[lo:hi], token))
        return int(self.child_node[i]) if i < hi and self.child_tok[i] == token else -1

    def value(self, node: int) -> int:
        """The index of the sequence ending at `node`, or -1."""
        return int(self.values[node]) if node >= 0 else -1

    def node_of(self, prefix: Sequence[int]) -> int:
        """The node reached by `prefix` from the root, or -1 when it is not in the trie."""
        node = ROOT
        for token in prefix:
            node = self.step(node, int(token))
            if node < 0:
                break
        return node

    def allowed_next(self, prefix: Sequence[int]) -> np.ndarray:
        """Sorted tokens that may follow `prefix`; empty when it is not in the trie or is complete."""
        return self.children(self.node_of(prefix))[0].copy()

    # ----- batched queries for the decoder (one node per beam)

    def allowed_mask(self, nodes: np.ndarray | torch.Tensor, vocab_size: int,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """[len(nodes), vocab_size] bool, True where the token may follow that node (all False
        for -1): one scatter over the concatenated children of the given nodes."""
        import torch

        if self.max_token >= vocab_size:
            raise TrieError(f"the trie holds token {self.max_token} but the LLM's vocabulary has {vocab_size} tokens: "
                            "it was built with another tokenizer; rerun the trie stage for this LLM")
        nd = _np(nodes).reshape(-1)
        if device is None:
            device = nodes.device if isinstance(nodes, torch.Tensor) else "cpu"
        rows, positions = self._child_positions(nd)
        cols = self.child_tok[positions]
        if torch.device(device).type == "cpu":
            # numpy, not torch, on CPU: torch's multi-threaded fill stalls for milliseconds on a
            # busy machine, numpy's single-threaded scatter takes ~0.1 ms for 5 x 50k.
            mask = np.zeros((len(nd), vocab_size), dtype=bool)
            mask[rows, cols] = True
            return torch.from_numpy(mask)
        mask = torch.zeros((len(nd), vocab_size), dtype=torch.bool, device=device)
        mask[torch.from_numpy(rows).to(device), torch.from_numpy(cols.astype(np.int64)).to(device)] = True
        return mask

    def _child_positions(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in `nodes`, position in child_tok/child_node) of every child of the given nodes,
        concatenated without a loop: each range's start minus where it begins in the
        concatenation, plus a running index. Nodes of -1 have none."""
        valid = nodes >= 0
        safe = np.where(valid, nodes, 0)
        starts = self.child_ptr[safe]
        counts = np.where(valid, self.child_ptr[safe + 1] - starts, 0)
        offsets = np.cumsum(counts) - counts
        positions = np.repeat(starts - offsets, counts) + np.arange(int(counts.sum()))
        return np.repeat(np.arange(len(nodes)), counts), positions

    # ----- files

    def arrays(self) -> dict[str, np.ndarray]:
        return {"child_ptr": self.child_ptr, "child_tok": self.child_tok,
                "child_node": self.child_node, "value": self.values}

    def save(self, path: str | Path) -> None:
        save_npz_atomic(path, {"format": np.array(FORMAT), **self.arrays()})

    @classmethod
    def load(cls, path: str | Path) -> Trie:
        return cls.from_npz(load_npz(path), path)

    @classmethod
    def from_npz(cls, data: dict[str, np.ndarray], path: str | Path) -> Trie:
        missing = [k for k in _ARRAYS if k not in data]
        if missing:
            raise TrieError(f"{path}: not a gemel trie (missing arrays: {', '.join(missing)})")
        ptr, tok, node, value = (data[k] for k in _ARRAYS)
        n = len(value)
        if len(ptr) != n + 1 or len(tok) != len(node) or (n and ptr[-1] != len(tok)):
            raise TrieError(f"{path}: inconsistent trie arrays (nodes {n}, child_ptr {len(ptr)}, "
                            f"child_tok {len(tok)}, child_node {len(node)})")
        return cls(ptr, tok, node, value)


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez through gemel.atomic (a normal file's mode, never a half-written trie). Writing
    through a file object keeps np.savez from appending '.npz' to the temporary name."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise TrieError(f"{path}: no such file (run the trie stage first)") from None
    except (ValueError, OSError) as e:
        raise TrieError(f"{path}: not a readable .npz trie ({e})") from None
    fmt = str(data.get("format", ""))
    if fmt != FORMAT:
        raise TrieError(f"{path}: format {fmt!r}, expected {FORMAT!r} (rebuild it with the trie stage)")
    return data


def node_dtype(n_nodes: int) -> type:
    return np.int32 if n_nodes < 2**31 else np.int64


def _np(x: np.ndarray | torch.Tensor | Sequence[int]) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch.Tensor
        return x.detach().cpu().numpy().astype(np.int64, copy=False)
    return np.asarray(x, dtype=np.int64)
