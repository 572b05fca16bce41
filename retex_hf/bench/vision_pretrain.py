"""The ``vision`` suite's models: a small CLIPVisionModel pretrained here, and its fine-tuned experts.

No CLIP weights can be had offline, so the base is pretrained on images that no task tests on
(separate pools of Fashion-MNIST and MNIST-5k), label-free: the pooled output must reconstruct a
7x7 thumbnail of the image, under random colour / inversion / rotation so the base sees many
domains. Heads are CLIP-style zero-shot heads: per task, the orthonormalised class means of the
base's normalised features, frozen while the tower fine-tunes (as text-embedding heads are).
Experts are full fine-tunes of the tower through `transformers.Trainer`.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from transformers import CLIPVisionConfig, CLIPVisionModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback


@dataclass(frozen=True)
class TowerSettings:
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 256
    patch_size: int = 7
    image_size: int = 28


@dataclass(frozen=True)
class TrainSettings:
    pretrain_steps: int = 1200
    pretrain_batch: int = 64
    pretrain_lr: float = 1e-3
    finetune_steps: int = 500  # per expert; converted to whole epochs of its training split
    finetune_batch: int = 64
    finetune_lr: float = 5e-4
    logit_scale: float = 20.0


FULL_TOWER, FULL_TRAIN = TowerSettings(), TrainSettings()
QUICK_TOWER = TowerSettings(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
QUICK_TRAIN = TrainSettings(pretrain_steps=40, finetune_steps=40, finetune_lr=2e-3)


def settings_dict(tower: TowerSettings, train: TrainSettings) -> dict:
    return {"tower": asdict(tower), "train": asdict(train)}


def new_tower(settings: TowerSettings) -> CLIPVisionModel:
    config = CLIPVisionConfig(
        image_size=settings.image_size,
        patch_size=settings.patch_size,
        hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        intermediate_size=settings.intermediate_size,
        num_channels=3,
        attention_dropout=0.0,
    )
    return CLIPVisionModel(config)


def _augment(grey: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random domain per image: a random rotation by 90-degree steps, random ink/background colours."""
    n = grey.shape[0]
    k = torch.randint(0, 4, (n,), generator=g)
    x = torch.stack([torch.rot90(img, int(r), dims=(0, 1)) for img, r in zip(grey, k, strict=True)])
    fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    plain = torch.rand(n, generator=g) < 0.4  # often plain white-on-black, the commonest look
    fg[plain], bg[plain] = 1.0, 0.0
    ink = x.unsqueeze(1)
    return (ink * fg + (1 - ink) * bg - 0.5) / 0.5


def pretrain(tower: CLIPVisionModel, pool: torch.Tensor, settings: TrainSettings, seed: int) -> dict:
    """Label-free pretraining on ``pool`` (grey [n, 28, 28]): pooled output → 7x7 RGB thumbnail.

    A random tower's pooled output barely reflects its input; this makes it summarise the image,
    so the base is a meaningful starting point whose features still leave each task work to do.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    decoder = torch.nn.Linear(tower.config.hidden_size, 3 * 7 * 7)
    params = list(tower.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=settings.pretrain_lr, weight_decay=0.01)
    steps, warmup = settings.pretrain_steps, max(1, settings.pretrain_steps // 10)
    tower.train()
    start, losses = time.perf_counter(), []
    for step in range(steps):
        lr_scale = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / steps))
        for group in optimizer.param_groups:
            group["lr"] = settings.pretrain_lr * lr_scale
        batch = pool[torch.randint(0, len(pool), (settings.pretrain_batch,), generator=g)]
        images = _augment(batch, g)
        target = F.adaptive_avg_pool2d(images, 7).flatten(1)
        loss = F.mse_loss(decoder(tower(pixel_values=images).pooler_output), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
    tower.eval()
    tail = losses[-max(1, steps // 10) :]
    return {"steps": steps, "final_loss": sum(tail) / len(tail), "seconds": time.perf_counter() - start}


@torch.no_grad()
def features(tower: CLIPVisionModel, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    tower.eval()
    out = [
        tower(pixel_values=pixel_values[i : i + batch_size]).pooler_output
        for i in range(0, len(pixel_values), batch_size)
    ]
    return torch.cat(out).float()


@torch.no_grad()
def prototype_head(tower: CLIPVisionModel, pixel_values: torch.Tensor, labels: torch.Tensor, num_labels: int):
    """Orthonormal rows nearest the class means of the base's normalised features (polar factor).

    Tied to what the base sees, like a zero-shot head, while classes whose base features nearly
    coincide still get distinct rows the tower can learn to reach.
    """
    feats = F.normalize(features(tower, pixel_values), dim=-1)
    missing = [c for c in range(num_labels) if not (labels == c).any()]
    if missing:
        raise ValueError(f"no training example of class(es) {missing}: cannot build a prototype head")
    means = torch.stack([feats[labels == c].mean(0) for c in range(num_labels)]).double()
    u, _, vh = torch.linalg.svd(means, full_matrices=False)
    return (u @ vh).float()


def head_logits(pooled: torch.Tensor, head: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """CLIP zero-shot logits: scale · cos(pooled, head row)."""
    return logit_scale * F.normalize(pooled.float(), dim=-1) @ F.normalize(head.float(), dim=-1).T


@torch.no_grad()
def accuracy(tower: CLIPVisionModel, pixel_values: torch.Tensor, labels: torch.Tensor, head: torch.Tensor) -> float:
    predictions = head_logits(features(tower, pixel_values), head, 1.0).argmax(-1)
    return (predictions == labels).float().mean().item()


class _Images(Dataset):
    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor):
        self.pixel_values, self.labels = pixel_values, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


class TowerHeadTrainer(Trainer):
    """Fine-tunes a bare CLIPVisionModel against a frozen tensor head.

    The tower has no head module and its forward takes no labels, so the loss (cross-entropy on
    the head's cosine logits) is computed here; everything else (optimiser, schedule, batching,
    seeding) is the stock Trainer.
    """

    def __init__(self, *args, head: torch.Tensor, logit_scale: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.head, self.logit_scale = head, logit_scale

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(pixel_values=inputs["pixel_values"])
        logits = head_logits(outputs.pooler_output, self.head.to(outputs.pooler_output.device), self.logit_scale)
        loss = F.cross_entropy(logits, inputs["labels"])
        return (loss, outputs) if return_outputs else loss


class _ValidationCurve(TrainerCallback):
    """Validation accuracy after every epoch: the evidence that an expert has converged."""

    def __init__(self, pixel_values: torch.Tensor, labels: torch.Tensor, head: torch.Tensor):
        self.pixel_values, self.labels, self.head, self.curve = pixel_values, labels, head, []

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        was_training = model.training
        self.curve.append(round(accuracy(model, self.pixel_values, self.labels, self.head), 4))
        model.train(was_training)


def finetune(
    tower: CLIPVisionModel,
    head: torch.Tensor,
    train: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor],
    settings: TrainSettings,
    seed: int,
) -> dict:
    """Full fine-tune of ``tower`` in place with `TowerHeadTrainer`; returns its training record."""
    steps_per_epoch = math.ceil(len(train[1]) / settings.finetune_batch)
    epochs = max(1, round(settings.finetune_steps / steps_per_epoch))
    curve = _ValidationCurve(*validation, head)
    with tempfile.TemporaryDirectory(prefix="retex-vision-expert-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            num_train_epochs=epochs,
            per_device_train_batch_size=settings.finetune_batch,
            learning_rate=settings.finetune_lr,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, epochs * steps_per_epoch // 10),
            weight_decay=0.01,
            max_grad_norm=1.0,
            save_strategy="no",
            report_to="none",
            logging_steps=max(1, steps_per_epoch),
            disable_tqdm=True,
            seed=seed,
            data_seed=seed,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = TowerHeadTrainer(
            model=tower,
            args=args,
            train_dataset=_Images(*train),
            head=head,
            logit_scale=settings.logit_scale,
            callbacks=[curve],
        )
        trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    tower.eval()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {
        "epochs": epochs,
        "steps": trainer.state.global_step,
        "train_loss_by_epoch": [round(v, 4) for v in losses],
        "validation_accuracy_by_epoch": curve.curve,
        "train_seconds": round(seconds, 1),
    }


@torch.no_grad()
def relative_distance(expert: CLIPVisionModel, base: CLIPVisionModel) -> float:
    """‖θ_t − θ0‖ / ‖θ0‖ over every floating parameter: how far fine-tuning moved the tower."""
    base_params = dict(base.named_parameters())
    diff = sum(float((p.float() - base_params[n].float()).pow(2).sum()) for n, p in expert.named_parameters())
    norm = sum(float(p.float().pow(2).sum()) for p in base_params.values())
    return math.sqrt(diff / norm)
