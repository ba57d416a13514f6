"""diffusers' own recipe as a CIFAR-10 budget peer: ``UNet2DModel`` + ``DDPMScheduler`` exactly as the defaults of
diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` configure them at ``--resolution 32``,
trained for a wall-clock budget and sampled with diffusers' DDIM (``benchmarks/cifar_budget.py`` calls it).

    from peers import diffusers_unconditional as du      # benchmarks/ on sys.path
    summary = du.train(images_uint8, minutes=30, out_dir=Path("runs/cifar-budget/diffusers"))
    x = du.sample(Path("runs/cifar-budget/diffusers"), 1000)   # uint8 [1000, 3, 32, 32], DDIM 50 steps, η = 0

The script read: huggingface/diffusers at commit 58eb52c0803e (file last changed in c56add8081be), run as
``accelerate launch train_unconditional.py --train_data_dir=… --resolution=32`` with every other flag left at its
default. Line numbers are that file's.

==================  ====================================================  ====================================
what                value                                                 source
==================  ====================================================  ====================================
network             ``UNet2DModel`` with sample_size 32, in/out channels  l. 381–402
                    3, layers_per_block 2, block_out_channels (128, 128,  (``--model_config_name_or_path``
                    256, 256, 512, 512), down blocks 4 × DownBlock2D,     default None); ``--resolution`` 32
                    AttnDownBlock2D, DownBlock2D, up blocks UpBlock2D,    given
                    AttnUpBlock2D, 4 × UpBlock2D; all else diffusers'
                    defaults (positional time embedding, GroupNorm 32,
                    SiLU, attention head dim 8, no dropout)
resolutions         32, 16, 8, 4, 2, 1; attention at 2×2 only;            follows from the above
                    113,673,219 parameters
noise schedule      ``DDPMScheduler(num_train_timesteps=1000,             l. 444; ``--ddpm_num_steps`` 1000,
                    beta_schedule="linear",                               ``--ddpm_beta_schedule`` linear,
                    prediction_type="epsilon")``: β from 1e-4 to 0.02,    ``--prediction_type`` epsilon
                    its other arguments its defaults
loss                ``F.mse_loss(model_output, noise)``; t uniform in     l. 596–614
                    0..999, noise ``torch.randn``
optimizer           ``AdamW(lr=1e-4, betas=(0.95, 0.999),                 l. 453; ``--learning_rate``,
                    weight_decay=1e-6, eps=1e-8)``                        ``--adam_beta1``, ``--adam_beta2``,
                                                                          ``--adam_weight_decay``,
                                                                          ``--adam_epsilon``
lr schedule         500 linear warm-up steps, then a half cosine to 0 at  l. 523; ``--lr_scheduler`` cosine,
                    ceil(N / 16) × 100 steps (312,500 for N = 50,000);    ``--lr_warmup_steps`` 500,
                    stepped after each optimizer step, so the first step  ``--num_epochs`` 100
                    runs at lr 0
gradient clipping   global norm 1.0                                       l. 629 (hard-coded)
batch               16 images, reshuffled every epoch, the last short     ``--train_batch_size`` 16; l. 519
                    batch kept                                            ``shuffle=True``
accumulation        none                                                  ``--gradient_accumulation_steps`` 1
EMA                 off (when on: ``EMAModel(decay=0.9999,                ``--use_ema`` store_true, default
                    use_ema_warmup=True, inv_gamma=1, power=3/4)``,       off; l. 410, l. 637;
                    stepped after each optimizer step)                    ``--ema_max_decay``,
                                                                          ``--ema_inv_gamma``, ``--ema_power``
augmentation        none: Resize(32, bilinear) and RandomCrop(32) are     l. 479–490; ``--random_flip``,
                    the identity on 32×32 images, no flip; ``ToTensor``   ``--center_crop`` default off
                    + ``Normalize([0.5], [0.5])`` → [−1, 1]
precision           fp32                                                  ``--mixed_precision`` no
weights saved       the trained model itself,                             l. 716–735 (the EMA copy only with
                    ``DDPMPipeline.save_pretrained``                      ``--use_ema``)
==================  ====================================================  ====================================

The script's own sampling (``DDPMPipeline``, ``--ddpm_num_inference_steps`` 1000) is replaced by diffusers'
``DDIMScheduler.from_config`` of the saved ``DDPMScheduler`` at 50 steps, η = 0, as ``DDIMPipeline`` runs it, so
that sampling stays affordable (issue 15). The diffusers README's example commands add ``--use_ema --random_flip
--center_crop`` at 64×64; those are not defaults (``Recipe(use_ema=True, random_flip=True)`` runs them). The script
has no seed: ``seed`` here seeds the initial weights, the data order, the noise and the timesteps.
Threads: each training step and each network evaluation while sampling is one unit of :class:`ddpm.threads.
ThreadTuner` (``threads="auto"``), as ``train.threads=auto`` treats our trainer.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from ddpm.threads import Threads, thread_scope

__all__ = [
    "RESOLUTION",
    "Recipe",
    "Setup",
    "augment",
    "build",
    "sample",
    "scheduler_config",
    "to_model_input",
    "train",
    "unet_config",
]

RESOLUTION = 32  # --resolution, the one flag given
SCRIPT = "huggingface/diffusers examples/unconditional_image_generation/train_unconditional.py @ 58eb52c0803e"


@dataclass(frozen=True)
class Recipe:
    """The script's argparse defaults that shape training (names as its flags; see the module's table)."""

    train_batch_size: int = 16
    num_epochs: int = 100
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    adam_beta1: float = 0.95
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-6
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # hard-coded in the script's loop
    use_ema: bool = False
    ema_inv_gamma: float = 1.0
    ema_power: float = 3 / 4
    ema_max_decay: float = 0.9999
    random_flip: bool = False
    center_crop: bool = False  # no effect at 32×32: the crop of a 32×32 image to 32×32 is the image
    mixed_precision: str = "no"
    prediction_type: str = "epsilon"
    ddpm_num_steps: int = 1000
    ddpm_beta_schedule: str = "linear"

    def __post_init__(self) -> None:
        if (
            self.mixed_precision != "no"
            or self.prediction_type != "epsilon"
            or self.gradient_accumulation_steps != 1
        ):
            raise ValueError(
                "this peer runs the script's defaults: mixed_precision=no, epsilon, no accumulation"
            )

    def total_steps(self, n_images: int) -> int:
        """The script's ``num_training_steps``: ``len(train_dataloader) × num_epochs`` (l. 523–527)."""
        return math.ceil(n_images / self.train_batch_size) * self.num_epochs


def unet_config(resolution: int = RESOLUTION) -> dict[str, Any]:
    """The ``UNet2DModel`` arguments the script passes when no ``--model_config_name_or_path`` is given."""
    return {
        "sample_size": resolution,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 2,
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "down_block_types": ("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    }


def scheduler_config(recipe: Recipe = Recipe()) -> dict[str, Any]:
    """The ``DDPMScheduler`` arguments the script passes (l. 444)."""
    return {
        "num_train_timesteps": recipe.ddpm_num_steps,
        "beta_schedule": recipe.ddpm_beta_schedule,
        "prediction_type": recipe.prediction_type,
    }


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] → float [N, 3, H, W] in [−1, 1], bit for bit as ``ToTensor`` + ``Normalize([0.5], [0.5])``."""
    return images.to(torch.float32).div(255).sub(0.5).div(0.5)


def augment(x: torch.Tensor, random_flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The script's spatial transforms on [N, 3, 32, 32] images: the identity, or with ``random_flip``
    ``RandomHorizontalFlip(p=0.5)`` per image. A new tensor; ``x`` is not changed."""
    if not random_flip:
        return x.clone()
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@dataclass
class Setup:
    """One training run of the recipe: the network, its optimizer and lr schedule, the noise schedule, the optional
    EMA, and the data (uint8 [N, 3, 32, 32]) drawn in reshuffled epochs by ``generator``."""

    recipe: Recipe
    images: torch.Tensor
    model: UNet2DModel
    noise_scheduler: DDPMScheduler
    optimizer: torch.optim.AdamW
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: EMAModel | None
    generator: torch.Generator
    device: torch.device
    step_count: int = 0
    _order: Iterator[torch.Tensor] | None = field(default=None, repr=False)

    def next_batch(self) -> torch.Tensor:
        """The next ``train_batch_size`` indices: a fresh permutation each epoch (``shuffle=True``), the epoch's
        last, shorter batch kept (``drop_last`` False)."""
        if self._order is None:
            self._order = self._epochs()
        return next(self._order)

    def _epochs(self) -> Iterator[torch.Tensor]:
        while True:
            yield from torch.randperm(len(self.images), generator=self.generator).split(
                self.recipe.train_batch_size
            )

    def step(self, idx: torch.Tensor | None = None) -> float:
        """One iteration of the script's loop body (l. 596–637) on images ``idx`` (default: the next batch);
        returns the loss. Order as there: noise, timesteps, q-sample, ε-MSE, backward, clip to norm 1, AdamW step,
        lr schedule step, zero grads, EMA step."""
        idx = self.next_batch() if idx is None else idx
        x0 = augment(to_model_input(self.images[idx]), self.recipe.random_flip, self.generator).to(
            self.device
        )
        noise = torch.randn(x0.shape, generator=self.generator).to(self.device)
        t = torch.randint(0, self.recipe.ddpm_num_steps, (len(x0),), generator=self.generator).to(self.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        loss = F.mse_loss(self.model(noisy, t).sample.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.step(self.model.parameters())
        self.step_count += 1
        return float(loss.detach())

    def save(self, out_dir: Path) -> None:
        """``DDPMPipeline(unet, scheduler).save_pretrained(out_dir)`` (``unet/``, ``scheduler/``,
        ``model_index.json``) with the EMA weights when the recipe keeps them, as the script saves (l. 716–735)."""
        if self.ema is not None:
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
        try:
            DDPMPipeline(unet=self.model, scheduler=self.noise_scheduler).save_pretrained(str(out_dir))
        finally:
            if self.ema is not None:
                self.ema.restore(self.model.parameters())


def build(images: torch.Tensor, recipe: Recipe = Recipe(), seed: int = 0, device: str = "cpu") -> Setup:
    """The script's objects for training on ``images`` (uint8 [N, 3, 32, 32]); the weights drawn from ``seed``
    (torch's global generator is left as it was)."""
    _check_images(images)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNet2DModel(**unet_config()).to(dev)
    model.train()
    ema = None
    if recipe.use_ema:
        ema = EMAModel(
            model.parameters(),
            decay=recipe.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=recipe.ema_inv_gamma,
            power=recipe.ema_power,
            model_cls=UNet2DModel,
            model_config=model.config,
        )
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=recipe.learning_rate,
        betas=(recipe.adam_beta1, recipe.adam_beta2),
        weight_decay=recipe.adam_weight_decay,
        eps=recipe.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        recipe.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=recipe.lr_warmup_steps * recipe.gradient_accumulation_steps,
        num_training_steps=recipe.total_steps(len(images)),
    )
    return Setup(
        recipe=recipe,
        images=images,
        model=model,
        noise_scheduler=DDPMScheduler(**scheduler_config(recipe)),
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        ema=ema,
        generator=torch.Generator().manual_seed(seed),
        device=dev,
    )


def train(
    images: torch.Tensor,
    minutes: float,
    out_dir: Path,
    seed: int = 0,
    threads: Threads = "auto",
    *,
    recipe: Recipe = Recipe(),
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train the recipe on ``images`` (uint8 [N, 3, 32, 32]) for ``minutes`` of wall-clock time counted from the
    first step (or until the script's ``num_epochs`` end), then save it to ``out_dir`` (see :meth:`Setup.save`).

    The lr schedule is the script's own, over its 100 epochs, not rescaled to the budget: what a user of the script
    gets when stopping it after ``minutes``. Returns ``steps``, ``images_seen``, ``seconds`` (training, first step to
    last), ``final_loss`` (mean of the last 100 steps' losses), ``lr_last`` and ``threads`` (the counts chosen); the
    same, with the recipe, goes to ``out_dir/train_summary.json``.
    """
    if not (isinstance(minutes, int | float) and math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes must be a positive number, got {minutes!r}")
    setup = build(images, recipe, seed=seed, device=device)
    max_steps = recipe.total_steps(len(images))
    budget_s = 60.0 * minutes
    losses: list[float] = []
    seen = 0
    with thread_scope(threads, device) as tuner:
        t0 = last_report = time.monotonic()
        while setup.step_count < max_steps and time.monotonic() - t0 < budget_s:
            idx = setup.next_batch()
            loss = tuner.run(lambda idx=idx: setup.step(idx), work=len(idx)) if tuner else setup.step(idx)
            if not math.isfinite(loss):
                raise FloatingPointError(f"diffusers peer: non-finite loss {loss} at step {setup.step_count}")
            losses.append(loss)
            seen += len(idx)
            now = time.monotonic()
            if progress and now - last_report >= 60.0:
                last_report = now
                print(
                    f"diffusers peer: step {setup.step_count} loss {sum(losses[-100:]) / len(losses[-100:]):.4f} "
                    f"{seen / (now - t0):.1f} img/s threads {tuner.threads if tuner else torch.get_num_threads()}",
                    flush=True,
                )
        seconds = time.monotonic() - t0
        chosen = [c.threads for c in tuner.choices] if tuner else []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    setup.save(out_dir)
    summary = {
        "steps": setup.step_count,
        "images_seen": seen,
        "seconds": round(seconds, 1),
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "lr_last": setup.lr_scheduler.get_last_lr()[0],
        "threads": chosen,
    }
    record = {**summary, "script": SCRIPT, "recipe": asdict(recipe), "minutes": minutes, "seed": seed}
    (out_dir / "train_summary.json").write_text(json.dumps(record, indent=2) + "\n")
    return summary


def sample(
    out_dir: Path,
    n: int,
    batch_size: int = 250,
    seed: int = 0,
    steps: int = 50,
    threads: Threads = "auto",
    *,
    eta: float = 0.0,
    device: str = "cpu",
) -> torch.Tensor:
    """``n`` images (uint8 [n, 3, 32, 32]) from the saved ``out_dir`` with ``DDIMScheduler.from_config`` of its
    ``DDPMScheduler`` at ``steps`` steps, as ``DDIMPipeline`` runs it (Song et al. 2021, eq. 12, η = ``eta``).

    x_T is drawn for all ``n`` at once from ``seed`` (so that ``batch_size`` does not change the images; for
    ``n ≤ batch_size`` they are ``DDIMPipeline``'s for a generator seeded ``seed``), then denoised ``batch_size`` at a
    time; each network evaluation is one :class:`~ddpm.threads.ThreadTuner` unit under ``threads="auto"``. The last
    step's x̂ maps to pixels as the script does: ``round(255 · clamp(x / 2 + 1/2, 0, 1))``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    out_dir = Path(out_dir)
    if not (out_dir / "unet").is_dir() or not (out_dir / "scheduler").is_dir():
        raise FileNotFoundError(f"{out_dir}: no unet/ and scheduler/ saved by train()")
    dev = torch.device(device)
    # low_cpu_mem_usage=False: what diffusers falls back to without accelerate, said here so it does not warn
    unet = UNet2DModel.from_pretrained(str(out_dir / "unet"), low_cpu_mem_usage=False).to(dev).eval()
    scheduler = DDIMScheduler.from_config(DDPMScheduler.from_pretrained(str(out_dir / "scheduler")).config)
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    noise = torch.randn(
        (n, unet.config.in_channels, size, size),
        generator=torch.Generator().manual_seed(seed),
        dtype=unet.dtype,
    )
    out = []
    with thread_scope(threads, dev) as tuner, torch.inference_mode():
        for chunk in noise.split(batch_size):
            x = chunk.to(dev)
            for t in scheduler.timesteps:

                def evaluate(x: torch.Tensor = x, t: torch.Tensor = t) -> torch.Tensor:
                    return unet(x, t).sample

                eps = tuner.run(evaluate, work=len(x)) if tuner else evaluate()
                x = scheduler.step(eps, t, x, eta=eta, use_clipped_model_output=None).prev_sample
            out.append(((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    return torch.cat(out)


def _check_images(images: object) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError("images must be a uint8 tensor [N, 3, 32, 32]")
    if tuple(images.shape[1:]) != (3, RESOLUTION, RESOLUTION) or len(images) == 0:
        raise ValueError(f"images must be uint8 [N, 3, 32, 32] with N ≥ 1, got {list(images.shape)}")
