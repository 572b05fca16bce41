"""Token-sequence domains shared by the text (BERT / RoBERTa) and seq2seq (T5) suites.

Task i draws its content tokens from its own range ``[10 + 30 i, 40 + 30 i)`` of the vocabulary,
so the task of an input is visible in its features (routing is possible), while each task's label
rule is different (so experts disagree and averaging their weights costs accuracy).
Ids below 10 are reserved for special tokens and T5 label words.
"""

from __future__ import annotations

import torch

RESERVED = 10
DOMAIN_SIZE = 30
MIN_LEN, MAX_LEN = 10, 14  # content tokens per sequence: variable, so padding and masks matter

# Classification rules, cycled over tasks: name -> label names.
RULES: dict[str, tuple[str, ...]] = {
    "majority": ("more_low", "more_high"),  # more tokens from the low or the high half of the domain
    "marker": ("marker_a", "marker_b", "marker_c"),  # which one of three marker tokens occurs
    "order": ("y_first", "x_first"),  # whether marker x occurs before marker y
    "count": ("zero", "one", "two", "three"),  # how many times the marker occurs
}
RULE_NAMES = tuple(RULES)


def vocab_size(num_tasks: int) -> int:
    return max(120, RESERVED + DOMAIN_SIZE * num_tasks)


def domain(task_index: int) -> tuple[int, int]:
    low = RESERVED + DOMAIN_SIZE * task_index
    return low, low + DOMAIN_SIZE


def task_name(names: tuple[str, ...], task_index: int) -> str:
    """Rule names cycle; from the second cycle on the index is appended to keep names unique."""
    name = names[task_index % len(names)]
    return name if task_index < len(names) else f"{name}_{task_index}"


def _uniform_int(low: torch.Tensor, count: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-row integer uniform in [low, low + count)."""
    return low + (torch.rand(low.shape, generator=g) * count).long().clamp_max(count - 1)


def _ranks(lengths: torch.Tensor, width: int, g: torch.Generator) -> torch.Tensor:
    """A random permutation rank of every valid position (padding gets ranks >= length)."""
    keys = torch.rand(len(lengths), width, generator=g)
    keys[torch.arange(width) >= lengths[:, None]] = 2.0
    return keys.argsort(dim=1).argsort(dim=1)


def sample_content(
    rule: str, task_index: int, n: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` labelled sequences of task ``task_index`` under ``rule``.

    Returns content ids ``[n, MAX_LEN]`` (0 past each length), lengths ``[n]`` and labels ``[n]``;
    labels are drawn first so classes are balanced, then a sequence is built to satisfy them.
    """
    low, high = domain(task_index)
    lengths = torch.randint(MIN_LEN, MAX_LEN + 1, (n,), generator=g)
    labels = torch.randint(0, len(RULES[rule]), (n,), generator=g)
    ranks = _ranks(lengths, MAX_LEN, g)
    zeros = torch.zeros(n, dtype=torch.long)
    if rule == "majority":
        half = DOMAIN_SIZE // 2
        more_low = _uniform_int(lengths // 2 + 1, lengths - lengths // 2, g)
        more_high = _uniform_int(zeros, (lengths + 1) // 2, g)
        n_low = torch.where(labels == 0, more_low, more_high)
        is_low = ranks < n_low[:, None]
        ids = torch.where(
            is_low,
            torch.randint(low, low + half, (n, MAX_LEN), generator=g),
            torch.randint(low + half, high, (n, MAX_LEN), generator=g),
        )
    elif rule == "marker":
        ids = torch.randint(low + 3, high, (n, MAX_LEN), generator=g)
        ids = torch.where(ranks == 0, low + labels[:, None], ids)
    elif rule == "order":
        ids = torch.randint(low + 2, high, (n, MAX_LEN), generator=g)
        first, second = (ranks == 0), (ranks == 1)
        x_first = labels[:, None] == 1
        positions = torch.arange(MAX_LEN)
        pos0 = (first.long() * positions).sum(1, keepdim=True)
        pos1 = (second.long() * positions).sum(1, keepdim=True)
        early = torch.minimum(pos0, pos1) == positions
        late = torch.maximum(pos0, pos1) == positions
        x_at, y_at = torch.where(x_first, early, late), torch.where(x_first, late, early)
        ids = torch.where(x_at, low, torch.where(y_at, low + 1, ids))
    elif rule == "count":
        ids = torch.randint(low + 1, high, (n, MAX_LEN), generator=g)
        ids = torch.where(ranks < labels[:, None], low, ids)
    else:
        raise ValueError(f"unknown rule {rule!r}; valid: {RULE_NAMES}")
    ids = ids.masked_fill(torch.arange(MAX_LEN) >= lengths[:, None], 0)
    return ids, lengths, labels


def wrap(
    content: torch.Tensor, lengths: torch.Tensor, prefix: list[int], suffix: list[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """``prefix + content[:len] + suffix``, right-padded with ``pad_id``, plus the attention mask."""
    n, width = content.shape
    total = len(prefix) + width + len(suffix)
    ids = torch.full((n, total), pad_id, dtype=torch.long)
    positions = torch.arange(total)
    ids[:, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
    body = positions[None, :] - len(prefix)
    in_body = (body >= 0) & (body < lengths[:, None])
    gathered = content.gather(1, body.clamp(0, width - 1).expand(n, -1))
    ids = torch.where(in_body, gathered, ids)
    for k, token in enumerate(suffix):
        ids = torch.where(positions[None, :] == (lengths[:, None] + len(prefix) + k), token, ids)
    mask = (positions[None, :] < (lengths[:, None] + len(prefix) + len(suffix))).long()
    return {"input_ids": ids, "attention_mask": mask}


def unbatch(inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Single-example dicts with the padding stripped, the way calibration data usually arrives."""
    lengths = inputs["attention_mask"].sum(1).tolist()
    return [{k: v[i, :length].clone() for k, v in inputs.items()} for i, length in enumerate(lengths)]


def trim(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop columns that are padding in every row."""
    width = int(inputs["attention_mask"].sum(1).max())
    return {k: v[:, :width].contiguous() for k, v in inputs.items()}
