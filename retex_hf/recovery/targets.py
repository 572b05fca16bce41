"""What each expert says on its calibration inputs: the targets the offsets are trained towards.

Targets are computed once, before training, so the experts need not stay in memory (or on the
accelerator) while the offsets train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .. import backbones

TOP_K = 32  # token-level KL for seq2seq keeps the teacher's top-k tokens per position


def pooled_output(outputs, attention_mask: torch.Tensor | None) -> torch.Tensor:
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is not None:
        return pooled
    return backbones.masked_mean(outputs.last_hidden_state, attention_mask)


@torch.no_grad()
def teacher_examples(
    expert: PreTrainedModel,
    task_index: int,
    batches: list[dict[str, torch.Tensor]],
    head_type: str,
    width: int,
    head: torch.Tensor | None = None,
    head_fn=None,
    pad_token_id: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """One training example per calibration input: its model inputs, task and teacher target."""
    examples = []
    for batch in batches:
        out = expert(**batch, return_dict=True)
        if backbones.is_encoder_decoder(expert):
            logprobs = F.log_softmax(out.logits.float(), dim=-1)
            k = min(TOP_K, logprobs.shape[-1])
            top_logprobs, top_ids = logprobs.topk(k, dim=-1)
            decoder = batch["decoder_input_ids"]
            mask = decoder != pad_token_id
            mask[:, 0] = True
            targets = {"teacher_top_ids": top_ids, "teacher_top_logprobs": top_logprobs, "decoder_mask": mask}
        elif head_type == "module":
            targets = {
                "teacher_logits": F.pad(out.logits.float(), (0, width - out.logits.shape[-1]), value=float("-inf"))
            }
        elif head_type == "tensor":
            logits = head_fn(backbones.tower_pooled_output(out))
            targets = {"teacher_logits": F.pad(logits.float(), (0, width - logits.shape[-1]), value=float("-inf"))}
        else:
            targets = {"teacher_features": pooled_output(out, batch.get("attention_mask")).float()}
        size = next(iter(batch.values())).shape[0]
        for i in range(size):
            example = {k: v[i] for k, v in batch.items()}
            example.update({k: v[i] for k, v in targets.items()})
            example["task_index"] = torch.tensor(task_index)
            examples.append(example)
    return examples
