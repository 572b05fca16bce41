"""CLIP suites: a tiny CLIPVisionModel tower fine-tuned per task against a frozen zero-shot-style head.

Each task draws images from its own domain (grey stripes, coloured blobs on black, tinted
checkerboards, red ramps), so the task is visible in pooled features. Heads are orthonormalised
class-mean prototypes of the base tower's features, frozen while the tower fine-tunes: like CLIP
text-derived heads, they are fixed per task and only the (mergeable) tower changes.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from .training import generator, seeded, train

SIZE = 16
LOGIT_SCALE = 10.0
PRETRAIN_STEPS, FINETUNE_STEPS, BATCH, LR = 150, 200, 32, 2e-3
PROTOTYPE_SAMPLES = 64
TASKS: dict[str, tuple[str, ...]] = {
    "stripes": ("horizontal", "vertical"),
    "blobs": ("top_left", "top_right", "bottom_left", "bottom_right"),
    "checker": ("cell_2", "cell_4", "cell_8"),
    "ramp": ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top"),
}
TASK_KINDS = tuple(TASKS)


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    coords = (torch.arange(SIZE, dtype=torch.float32) + 0.5) / SIZE
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    return ys, xs


def sample(task_index: int, n: int, g: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``n`` images ``[n, 3, SIZE, SIZE]`` of task ``task_index`` (about in [-1, 1]) and their labels."""
    kind = TASK_KINDS[task_index % len(TASK_KINDS)]
    labels = torch.randint(0, len(TASKS[kind]), (n,), generator=g)
    ys, xs = _grid()
    col = labels.view(n, 1, 1).float()

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand((n, *shape), generator=g)

    if kind == "stripes":  # grey: the same pattern in all three channels
        freq = torch.randint(2, 5, (n, 1, 1), generator=g).float()
        coord = torch.where(col == 0, ys, xs)
        image = (
            (0.9 * torch.sin(2 * math.pi * freq * coord + 2 * math.pi * rand(1, 1))).unsqueeze(1).expand(-1, 3, -1, -1)
        )
    elif kind == "blobs":  # a coloured gaussian blob on a black background
        cy = (labels // 2).view(n, 1, 1) * 0.5 + 0.12 + 0.26 * rand(1, 1)
        cx = (labels % 2).view(n, 1, 1) * 0.5 + 0.12 + 0.26 * rand(1, 1)
        sigma = 0.07 + 0.05 * rand(1, 1)
        blob = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))
        image = -1.0 + 2.0 * blob.unsqueeze(1) * (0.5 + 0.5 * rand(3, 1, 1))
    elif kind == "checker":  # a tinted checkerboard on a blue cast, whose cell size is the label
        cell = (2 ** (labels + 1)).view(n, 1, 1).float()
        oy, ox = (rand(1, 1) * cell).floor(), (rand(1, 1) * cell).floor()
        parity = (((ys * SIZE + oy) / cell).floor() + ((xs * SIZE + ox) / cell).floor()) % 2
        tint = 0.3 + 0.5 * rand(3, 1, 1)
        image = 0.6 * (2 * parity - 1).unsqueeze(1) * tint + torch.tensor([-0.3, 0.1, 0.4]).view(1, 3, 1, 1)
    else:  # "ramp": a reddish linear ramp on a warm cast, whose direction is the label
        coord = torch.where(col < 2, xs, ys)
        sign = torch.where(labels % 2 == 0, 1.0, -1.0).view(n, 1, 1)
        ramp = sign * (2 * coord - 1) * (0.5 + 0.5 * rand(1, 1))
        image = ramp.unsqueeze(1) * torch.tensor([1.0, 0.3, 0.3]).view(1, 3, 1, 1)
        image = image + torch.tensor([0.3, -0.2, -0.4]).view(1, 3, 1, 1)
    image = image + 0.05 * torch.randn((n, 3, SIZE, SIZE), generator=g)
    image = image + 0.5 * (task_index // len(TASK_KINDS))  # later cycles: shifted brightness, a new domain
    return {"pixel_values": image.contiguous()}, labels


def _pretrain(base: CLIPVisionModel, num_tasks: int, steps: int, seed: int) -> None:
    """Label-free pre-training over all domains: reconstruct a 4x4 thumbnail from the pooled feature.

    A random tower's pooled output barely reflects image content; this makes it summarise global
    appearance, as a pre-trained encoder would, so the base is a meaningful starting point.
    """
    decoder = torch.nn.Linear(base.config.hidden_size, 3 * 4 * 4)
    gens = [generator(seed, 1, t) for t in range(num_tasks)]
    per_task = max(1, BATCH // num_tasks)
    module = torch.nn.ModuleList([base, decoder])

    def loss_at(step: int) -> torch.Tensor:
        images = torch.cat([sample(t, per_task, gens[t])[0]["pixel_values"] for t in range(num_tasks)])
        thumbnail = F.adaptive_avg_pool2d(images, 4).flatten(1)
        return F.mse_loss(decoder(base(pixel_values=images).pooler_output), thumbnail)

    train(module, loss_at, steps, LR)


@torch.no_grad()
def prototype_head(tower: CLIPVisionModel, task_index: int, num_labels: int, g: torch.Generator) -> torch.Tensor:
    """Class means of the base tower's normalised pooled features, made orthonormal.

    The orthonormal rows closest to the class means (polar factor of the SVD) keep the head tied to
    what the base sees, while classes whose base features nearly coincide still get distinct rows
    the tower can learn to reach.
    """
    inputs, labels = sample(task_index, PROTOTYPE_SAMPLES * num_labels, g)
    feats = F.normalize(tower(**inputs).pooler_output, dim=-1)
    means = torch.stack([feats[labels == c].mean(0) for c in range(num_labels)]).double()
    u, _, vh = torch.linalg.svd(means, full_matrices=False)
    return (u @ vh).float()


def build(backbone: str, num_tasks: int, seed: int, n_calibration: int, n_test: int, train_steps: int | None) -> dict:
    """Base tower, fine-tuned towers, frozen heads and data of a CLIP suite (SyntheticSuite kwargs)."""
    steps = FINETUNE_STEPS if train_steps is None else train_steps
    pretrain_steps = PRETRAIN_STEPS if train_steps is None else min(PRETRAIN_STEPS, train_steps)
    config = CLIPVisionConfig(
        image_size=SIZE,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_channels=3,
        attention_dropout=0.0,
    )
    with seeded(seed):
        base = CLIPVisionModel(config)
        _pretrain(base, num_tasks, pretrain_steps, seed)
    base.eval()
    experts, heads, calibration, test, test_labels, id2label = {}, {}, {}, {}, {}, {}
    for t in range(num_tasks):
        kind = TASK_KINDS[t % len(TASK_KINDS)]
        name = kind if t < len(TASK_KINDS) else f"{kind}_{t}"
        id2label[name] = dict(enumerate(TASKS[kind]))
        head = prototype_head(base, t, len(TASKS[kind]), generator(seed, 6, t))
        expert = copy.deepcopy(base)
        data_gen = generator(seed, 3, t)

        def loss_at(step: int, expert=expert, t=t, head=head, data_gen=data_gen) -> torch.Tensor:
            inputs, labels = sample(t, BATCH, data_gen)
            feats = F.normalize(expert(**inputs).pooler_output, dim=-1)
            return F.cross_entropy(LOGIT_SCALE * feats @ head.T, labels)

        with seeded(seed * 31 + t + 1):
            train(expert, loss_at, steps, LR)
        experts[name], heads[name] = expert.eval(), head
        calib_inputs, _ = sample(t, n_calibration, generator(seed, 4, t))
        calibration[name] = [{"pixel_values": x.clone()} for x in calib_inputs["pixel_values"]]
        test[name], test_labels[name] = sample(t, n_test, generator(seed, 5, t))
    return dict(
        base=base,
        experts=experts,
        heads=heads,
        head_logit_scale=LOGIT_SCALE,
        calibration=calibration,
        test=test,
        test_labels=test_labels,
        id2label=id2label,
    )
