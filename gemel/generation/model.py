"""GEMEL: a frozen causal LM plus one trained linear map from an image vector to k token embeddings."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from gemel.atomic import atomic_path
from gemel.errors import GemelError
from gemel.generation.prompt import IMAGE, Batch


class MapperError(GemelError, ValueError):
    """A mapper file that does not fit the model it is loaded into; names the file."""


class Mapper(nn.Module):
    """Image vector -> k token embeddings: a fixed standardisation, then the one trained linear layer.

    Frozen image features share a large common component (EfficientNet's pooled features are all
    positive); centring them on the training images' mean and scaling them to unit average norm
    lets AdamW's per-weight steps move the image-specific part instead of that offset. The pair is
    fitted once before training and saved with the layer, so the whole map stays affine.

    The bias starts at the LLM's mean token embedding: a default-initialised layer maps every image
    to near-zero vectors (norm ~0.5 where SmolLM2's tokens have ~3), which the LLM reads as
    nothing, and the mapper then spends most of a short training run just reaching token scale."""

    def __init__(self, image_dim: int, out_dim: int, token_mean: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("shift", torch.zeros(image_dim))
        self.register_buffer("scale", torch.ones(()))
        self.linear = nn.Linear(image_dim, out_dim, dtype=torch.float32)
        if token_mean is not None:
            with torch.no_grad():
                self.linear.bias.copy_(token_mean.float().repeat(out_dim // token_mean.numel()))

    def fit(self, vectors: torch.Tensor) -> None:
        shift = vectors.mean(0)
        spread = (vectors - shift).norm(dim=1).pow(2).mean().sqrt()
        self.shift.copy_(shift)
        self.scale.fill_(1.0 / float(spread) if spread > 0 else 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.shift) * self.scale)


class Gemel(nn.Module):
    def __init__(self, llm: PreTrainedModel, image_dim: int, prefix_tokens: int):
        super().__init__()
        self.llm = llm
        self.k = prefix_tokens
        self.embed_dim = llm.get_input_embeddings().embedding_dim  # not hidden_size: OPT-350M differs
        # The mapper stays fp32 even beside a bf16 LLM: AdamW's second moment underflows in fp16.
        token_mean = llm.get_input_embeddings().weight.detach().float().mean(0)
        self.mapper = Mapper(image_dim, prefix_tokens * self.embed_dim, token_mean)
        self.softcap = getattr(llm.config, "final_logit_softcapping", None)

    @property
    def device(self) -> torch.device:
        return self.mapper.linear.weight.device

    def embed(self, batch: Batch, demo_image_grad: bool = True) -> torch.Tensor:
        """Token embeddings with every image slot replaced by the mapped image vectors; without
        `demo_image_grad`, only the question's own image passes gradient to the mapper."""
        ids = batch.ids.to(self.device)
        slots = ids == IMAGE
        embeds = self.llm.get_input_embeddings()(ids.clamp(min=0))
        if batch.images.shape[0]:
            mapped = self.mapper(batch.images.to(self.device))
            if not demo_image_grad:
                mapped = torch.where(batch.query_images.to(self.device)[:, None], mapped, mapped.detach())
            mapped = mapped.view(-1, self.embed_dim).to(embeds.dtype)
            # masked_scatter fills slots in row-major order: the order collate() gathered images in.
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), mapped)
        return embeds

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.llm.get_output_embeddings()(hidden).float()
        if self.softcap:  # Gemma-style final logit soft-capping, as the LLM's own head applies it
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def forward_hidden(self, batch: Batch, **kw: Any) -> Any:
        attn = batch.attention_mask.to(self.device)
        return self.llm.base_model(inputs_embeds=self.embed(batch), attention_mask=attn,
                                   position_ids=positions(attn), **kw)

    def loss(self, batch: Batch, demo_image_grad: bool = True) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens (name + EOS). Vocabulary logits are computed
        only at the positions that predict them, never over the whole prompt.

        Without `demo_image_grad` the demonstrations' image tokens still use the current mapper but
        pass no gradient, so everything before the question runs once without autograd (as a KV
        cache) and the backward pass covers only the question and its answer: the same loss, and on
        a CPU a step that costs little more than one forward. The paper's gradient flows through
        every image."""
        cut = int(batch.query_start.min())
        if demo_image_grad or cut == 0:
            hidden = self.forward_hidden(batch, use_cache=False).last_hidden_state
            cut = 0
        else:
            hidden = self._question_hidden(batch, cut)
        target = batch.target_mask[:, cut:].to(self.device)
        predictors = target[:, 1:]  # position t predicts token t+1
        h = hidden[:, :-1][predictors]
        labels = batch.ids[:, cut:].to(self.device)[:, 1:][predictors]
        return F.cross_entropy(self.logits(h), labels)

    def _question_hidden(self, batch: Batch, cut: int) -> torch.Tensor:
        """Hidden states from column `cut` on; the columns before it run once without autograd."""
        attn = batch.attention_mask.to(self.device)
        pos = positions(attn)
        embeds = self.embed(batch, demo_image_grad=False)
        cache = DynamicCache()  # filled by the no-grad pass, read by the question's pass
        with torch.no_grad():
            self.llm.base_model(inputs_embeds=embeds[:, :cut], attention_mask=attn[:, :cut],
                                position_ids=pos[:, :cut], cache=cache, use_cache=True)
        return self.llm.base_model(inputs_embeds=embeds[:, cut:], attention_mask=attn, position_ids=pos[:, cut:],
                                   cache=cache, use_cache=True).last_hidden_state

    # ------------------------------------------------------------------ mapper checkpoints
    def save_mapper(self, path: str | Path, metadata: dict[str, str]) -> None:
        """Write the mapper's weights (safetensors) atomically, with the usual file mode. The
        metadata goes in as one sorted JSON string: safetensors writes a metadata map's keys in a
        random order per process, and equal weights must give equal bytes."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.mapper.state_dict().items()}
        meta = {**metadata, "prefix_tokens": str(self.k), "image_dim": str(self.mapper.linear.in_features),
                "embed_dim": str(self.embed_dim)}
        with atomic_path(path) as tmp:
            tmp.write_bytes(save(state, metadata={"gemel": json.dumps(meta, sort_keys=True)}))

    def load_mapper(self, path: str | Path) -> None:
        state = load_file(str(path), device=str(self.device))
        got, want = state.get("linear.weight"), self.mapper.linear.weight
        if got is None or got.shape != want.shape:
            shape = tuple(got.shape) if got is not None else "unknown"
            raise MapperError(f"{path}: mapper of shape {shape} does not fit this model ({tuple(want.shape)}): "
                              "it was trained for another LLM, k or image encoder; retrain it (the train stage) "
                              "or use the settings it was trained with")
        self.mapper.load_state_dict(state)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token, so left padding is invisible."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)
