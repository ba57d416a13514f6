"""Training recipes (``ddpm train --preset NAME``): complete run configs named after the papers and the seed
documents they reproduce, each with the source of its numbers.

These are *training* recipes; the network architectures they use are :mod:`ddpm.nn.presets` (``ddpm.presets``).

Longer than ~400 lines on purpose: a catalogue, one short function per recipe, each with its sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .config import Config, ConfigError, DataConfig, DiffusionConfig, SampleConfig, TrainConfig
from .nn.presets import unet_config

__all__ = ["RECIPES", "get_recipe", "recipe_names"]


RECIPES: dict[str, Callable[[], Config]] = {}


def _preset(name: str, source: str) -> Callable[[Callable[[], Config]], Callable[[], Config]]:
    def register(fn: Callable[[], Config]) -> Callable[[], Config]:
        def build() -> Config:
            return replace(fn(), preset=name, source=source)

        build.__doc__ = source
        RECIPES[name] = build
        return build

    return register


def recipe_names() -> list[str]:
    """Every training recipe's name, sorted (what ``ddpm presets`` lists)."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Config:
    """The named training recipe (``ddpm train --preset NAME``), a fresh :class:`Config` each call."""
    if name not in RECIPES:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(recipe_names())}")
    return RECIPES[name]()


def _cfg(
    model: str,
    data: DataConfig,
    train: TrainConfig,
    diffusion: DiffusionConfig | None = None,
    sample: SampleConfig | None = None,
    **model_kw: Any,
) -> Config:
    return Config(
        model=unet_config(model, **model_kw),
        diffusion=diffusion or DiffusionConfig(),
        data=data,
        train=train,
        sample=sample or SampleConfig(),
    )


@_preset(
    "tiny", "Seconds on a CPU: the tiny U-Net on synthetic labelled blobs (16×16); for tests and smoke runs."
)
def _tiny() -> Config:
    return _cfg(
        "tiny",
        DataConfig(name="blobs", image_size=16, val_fraction=0.1),
        TrainConfig(
            batch_size=16,
            lr=1e-3,
            max_steps=20,
            log_every=5,
            checkpoint_every=10,
            sample_n=16,
            val_every=10,
            val_batches=2,
            ema_decay=0.999,
            precision="fp32",
        ),
        DiffusionConfig(timesteps=100, beta_end=0.2),
        SampleConfig(steps=10),
        in_channels=1,
        out_channels=1,
        image_size=16,
    )


@_preset(
    "demo",
    "`ddpm demo`: scikit-learn's 1,797 real 8×8 digits upscaled to 16×16, a small U-Net, ~2 CPU-minutes.",
)
def _demo() -> Config:
    return _cfg(
        "mnist-cpu",
        DataConfig(name="digits", image_size=16, val_fraction=0.1),
        TrainConfig(
            batch_size=64,
            lr=2e-3,
            warmup_steps=50,
            max_steps=1500,
            max_minutes=2.0,
            log_every=50,
            checkpoint_every=500,
            val_every=250,
            sample_every=500,
            ema_decay=0.999,
            sample_n=64,
        ),
        DiffusionConfig(schedule="cosine", timesteps=1000),
        SampleConfig(method="unipc", steps=20),
        image_size=16,
    )


@_preset(
    "mnist-cpu",
    "The best MNIST in ~10 CPU-minutes on 2 cores (tuned with benchmarks/mnist_budget.py): the 1.1M mnist-cpu "
    "U-Net at MNIST's native 28×28 (attention at 7×7), cosine schedule, bf16, lr 2e-3 decayed to 0 over the "
    "budget (cosine), sampled ancestrally at 25 respaced steps (stochastic samplers correct the errors of a "
    "short-trained net that ODE solvers keep: after 3 minutes FID 45 ancestral, 48 SDE-DPM-Solver++(2M), 102 UniPC).",
)
def _mnist_cpu() -> Config:
    return _cfg(
        "mnist-cpu",
        DataConfig(name="mnist", image_size=28, val_fraction=0.0),
        TrainConfig(
            batch_size=64,  # a few hundred img/s at most here: more, smaller steps beat fewer large ones
            lr=2e-3,
            warmup_steps=100,
            lr_schedule="cosine",
            max_minutes=10.0,
            max_steps=100_000,
            log_every=50,
            checkpoint_every=250,
            sample_every=None,
            ema_decay=0.999,
        ),
        DiffusionConfig(schedule="cosine"),
        SampleConfig(method="ddpm", steps=25),
        image_size=28,
        attention_resolutions=(7,),
    )


@_preset(
    "cifar10-cpu",
    "CIFAR-10 in 30 CPU-minutes on 2 cores (benchmarks/cifar_budget.py): the 1.1M cifar10-cpu U-Net (32 ch, "
    "attention at 8×8), random flips, cosine schedule, bf16, batch 64, lr 1e-3 decayed to 0 over the budget (cosine), EMA "
    "0.999 with warm-up, sampled ancestrally at 25 respaced steps (as mnist-cpu: stochastic samplers correct a "
    "short-trained net's errors).",
)
def _cifar10_cpu() -> Config:
    return _cfg(
        "cifar10-cpu",
        DataConfig(name="cifar10", image_size=32, flip=True),
        TrainConfig(
            batch_size=64,
            lr=1e-3,
            warmup_steps=100,
            lr_schedule="cosine",
            max_minutes=30.0,
            max_steps=1_000_000,
            log_every=50,
            checkpoint_every=500,
            sample_every=None,
            ema_decay=0.999,
        ),
        DiffusionConfig(schedule="cosine"),
        SampleConfig(method="ddpm", steps=25),
    )


@_preset(
    "mnist",
    "The seed lesson's MNIST run: 20 epochs, batch 128, Adam 2e-4 (the lesson reports loss ~0.02-0.05), "
    "on the mnist U-Net.",
)
def _mnist() -> Config:
    return _cfg(
        "mnist",
        DataConfig(name="mnist", image_size=32, val_fraction=0.2),
        TrainConfig(
            batch_size=128, lr=2e-4, epochs=20, grad_clip=1.0, checkpoint_every=2000, sample_every=2000
        ),
    )


@_preset(
    "cifar10-ddpm",
    "Ho et al. 2020 CIFAR-10 (§4, App. B and their scripts/run_cifar.py): 35.7M U-Net, linear β 1e-4..0.02, "
    "T=1000, ε-prediction with L_simple, σ²=β (fixedlarge), batch 128, Adam 2e-4 with 5k linear warm-up then "
    "constant, grad clip 1, dropout 0.1, constant EMA 0.9999 (no warm-up), random flips, 800k steps; all T "
    "ancestral steps with x̂₀ clipped.",
)
def _cifar10_ddpm() -> Config:
    return _cfg(
        "ddpm-cifar10",
        DataConfig(name="cifar10", image_size=32, flip=True),
        TrainConfig(
            batch_size=128,
            lr=2e-4,
            warmup_steps=5000,
            grad_clip=1.0,
            ema_decay=0.9999,
            ema_warmup=False,
            max_steps=800_000,
            checkpoint_every=10_000,
            sample_every=10_000,
            log_every=100,
        ),
        DiffusionConfig(
            schedule="linear", timesteps=1000, beta_start=1e-4, beta_end=0.02, variance="fixed_large"
        ),
        SampleConfig(method="ddpm", steps=None),
    )


RECIPES["cifar10"] = RECIPES["cifar10-ddpm"]


# --------------------------------------------------------------------------- seed experiments
# One preset per experiment of the founding documents (shared/seeds), so they can be rerun as published. Where a
# seed is silent the numbers follow the paper it cites; where its code is buggy we follow that paper and say so.
# "No EMA" is ema_decay=0 (the EMA copy equals the raw weights); "Adam" is the Trainer's AdamW with weight_decay=0.
_NO_EMA: dict[str, Any] = dict(ema_decay=0.0, ema_warmup=False)
_ALL_VAL = 1_000_000  # val_batches large enough that the validation loss covers the whole held-out split


@_preset(
    "seed-lesson-mnist",
    "The lesson's MNIST run (train_ddpm/main): SimpleUNet(1, 64, 256) (`tutorial` net), linear β 1e-4..0.02, "
    "T=1000, batch 128, Adam 2e-4, 20 epochs, no EMA/clipping/warm-up, fp32; full ancestral sampling with "
    "σ²=β̃. It resizes 28→32 bilinearly; we zero-pad to 32 (the loader's default).",
)
def _seed_lesson_mnist() -> Config:
    return _cfg(
        "tutorial",
        DataConfig(name="mnist", image_size=32),
        TrainConfig(
            batch_size=128,
            lr=2e-4,
            epochs=20,
            grad_clip=None,
            precision="fp32",
            checkpoint_every=2000,
            sample_every=None,
            **_NO_EMA,
        ),
        DiffusionConfig(schedule="linear", timesteps=1000),
        SampleConfig(method="ddpm", steps=None),
    )


@_preset(
    "seed-lesson-cifar10",
    "The lesson's CIFAR-10 exercise (train_cifar10): SimpleUNet(3, 128, 256) (`lesson-cifar10` net), cosine "
    "T=1000, random flips, batch 128, Adam 2e-4, 100 epochs (its '50-100', the solution's 100), no EMA, fp32; "
    "full ancestral sampling, σ²=β̃. Its cosine clamps β to [1e-4, 0.9999]; we clip at 0.999 as Nichol & Dhariwal.",
)
def _seed_lesson_cifar10() -> Config:
    return _cfg(
        "lesson-cifar10",
        DataConfig(name="cifar10", image_size=32, flip=True),
        TrainConfig(
            batch_size=128,
            lr=2e-4,
            epochs=100,
            grad_clip=None,
            precision="fp32",
            checkpoint_every=5000,
            sample_every=None,
            **_NO_EMA,
        ),
        DiffusionConfig(schedule="cosine", timesteps=1000),
        SampleConfig(method="ddpm", steps=None),
    )


@_preset(
    "seed-report-cifar10",
    "The report's CIFAR-10 run (Tables 1-3, §5.3): its U-Net (`report-cifar10`), linear β 1e-4..0.02, T=1000, "
    "batch 128, no flips, AdamW 2e-4 with weight decay 1e-4 (Table 3; its code leaves AdamW's 1e-2), 300 "
    "epochs, EMA 0.9999 from step 0, no clipping, fp32; ancestral sampling with σ²=β as Ho et al. on CIFAR-10. "
    "Its code draws t in 1..T-1 and stops the chain before t=0: we use all T steps (Ho et al.).",
)
def _seed_report_cifar10() -> Config:
    return _cfg(
        "report-cifar10",
        DataConfig(name="cifar10", image_size=32, flip=False),
        TrainConfig(
            batch_size=128,
            lr=2e-4,
            weight_decay=1e-4,
            epochs=300,
            grad_clip=None,
            ema_decay=0.9999,
            ema_warmup=False,
            precision="fp32",
            checkpoint_every=19_500,  # the report saves every 50 epochs (390 steps each)
            sample_every=19_500,
            sample_n=16,
        ),
        DiffusionConfig(schedule="linear", timesteps=1000, variance="fixed_large"),
        SampleConfig(method="ddpm", steps=None),
    )


def _seed_scratch(dataset: str, net: str) -> Config:
    return _cfg(
        net,
        DataConfig(name=dataset, image_size=32, val_fraction=0.1, flip=False),
        TrainConfig(
            batch_size=128,  # 2 images per micro-batch × 64 accumulation steps
            grad_accum=64,
            lr=1e-4,
            weight_decay=0.0,
            epochs=500,
            grad_clip=None,
            precision="auto",
            val_batches=_ALL_VAL,
            checkpoint_every=5000,
            sample_every=None,
            **_NO_EMA,
        ),
        DiffusionConfig(schedule="cosine", timesteps=1000, cosine_s=0.008, variance="fixed_large"),
        SampleConfig(method="ddpm", steps=None),
    )


_SCRATCH_SOURCE = (
    "The from-scratch guide's hyper-parameters JSON: batch 2 × accumulation 64 (= 128), cosine s=0.008, T=1000, "
    "Adam lr 1e-4, no weight decay, 500 epochs, mixed precision (its torch.cuda.amp fp16; `auto` = bf16 where "
    "fast, set train.precision=fp16 for GradScaler fp16 on CUDA), no EMA or clipping; σ_t=√β_t in its sampler. "
    "It plots a validation loss without saying the split: 10% held out here."
)


@_preset("seed-scratch-mnist", _SCRATCH_SOURCE + " MNIST on the `scratch-mnist` net.")
def _seed_scratch_mnist() -> Config:
    return _seed_scratch("mnist", "scratch-mnist")


@_preset("seed-scratch-cifar10", _SCRATCH_SOURCE + " CIFAR-10 (no flips mentioned) on `scratch-cifar10`.")
def _seed_scratch_cifar10() -> Config:
    return _seed_scratch("cifar10", "scratch-cifar10")


def _seed_paper(
    dataset: str, net: str, timesteps: int, epochs: int, patience: int | None, **model_kw: Any
) -> Config:
    return _cfg(
        net,
        DataConfig(name=dataset, image_size=32, val_fraction=0.2, flip=False),
        TrainConfig(
            batch_size=128,
            lr=1e-3,
            weight_decay=0.0,
            epochs=epochs,
            grad_clip=None,
            precision="fp32",
            val_every=None,  # once per epoch, over the whole validation split
            val_batches=_ALL_VAL,
            early_stopping_patience=patience,
            early_stopping_min_delta=0.001,
            checkpoint_every=5000,
            sample_every=None,
            **_NO_EMA,
        ),
        DiffusionConfig(schedule="linear", timesteps=timesteps, beta_start=1e-4, beta_end=0.02),
        SampleConfig(method="ddpm", steps=None),
        **model_kw,
    )


_PAPER_SOURCE = (
    "The paper (Vu Minh & Won 2025) §5, §9: linear β 1e-4..0.02, Adam 1e-3 constant, batch 128, no EMA or "
    "clipping, fp32, full ancestral sampling; "
)


@_preset(
    "seed-paper-mnist-1",
    _PAPER_SOURCE + "Diffusion_model_1 on MNIST: T=500, 50 epochs, 48k/12k split, no early stopping "
    "(§9.6.5: not needed for model 1).",
)
def _seed_paper_mnist_1() -> Config:
    return _seed_paper("mnist", "paper-mnist-1", 500, 50, None)


@_preset(
    "seed-paper-mnist-2",
    _PAPER_SOURCE + "Diffusion_model_2 on MNIST: T=500, 50 epochs, 48k/12k split, early stopping on the "
    "epoch validation loss (patience unstated for MNIST: 10, Δ=0.001 as its CIFAR-10 model 2).",
)
def _seed_paper_mnist_2() -> Config:
    return _seed_paper("mnist", "paper-mnist-2", 500, 50, 10)


@_preset(
    "seed-paper-cifar10-1",
    _PAPER_SOURCE
    + "CIFAR-10_diffusion_model_1: T=500, 60 epochs, 40k/10k split; §9.7 lists early stopping as "
    "new in model 2, so none here (validation loss still logged per epoch).",
)
def _seed_paper_cifar10_1() -> Config:
    return _seed_paper("cifar10", "paper-cifar10-1", 500, 60, None)


@_preset(
    "seed-paper-cifar10-2",
    _PAPER_SOURCE
    + "CIFAR-10_diffusion_model_2: T=1000, 60 epochs, 40k/10k split, early stopping patience 10, "
    "Δ=0.001 (§9.7).",
)
def _seed_paper_cifar10_2() -> Config:
    return _seed_paper("cifar10", "paper-cifar10-2", 1000, 60, 10)


@_preset(
    "seed-paper-cifar10-3",
    _PAPER_SOURCE + "CIFAR-10_diffusion_model_3 (≈66 M): T=1000, 60 epochs, 40k/10k split, early stopping "
    "patience 13, Δ=0.001 (§9.7).",
)
def _seed_paper_cifar10_3() -> Config:
    return _seed_paper("cifar10", "paper-cifar10-3", 1000, 60, 13)


@_preset(
    "seed-iddpm-cond",
    "The Improved-DDPM repo's class-conditional CIFAR-10 run: `seed-iddpm-cond` net (BigGAN ResBlocks, AdaGN, "
    "class embedding), cosine schedule, x0-prediction → posterior mean with σ²=β̃, EMA, AMP, 150 epochs. Values "
    "it leaves unnamed follow Nichol & Dhariwal's CIFAR-10 run: batch 128, Adam 1e-4, dropout 0.3, EMA 0.9999, "
    "no clipping; T=1000 (Ho et al.: with fixed variances the full chain is sampled). No label dropout: the repo "
    "samples conditionally without guidance (set train.label_dropout=0.1 to train the null label).",
)
def _seed_iddpm_cond() -> Config:
    return _cfg(
        "seed-iddpm-cond",
        DataConfig(name="cifar10", image_size=32),
        TrainConfig(
            batch_size=128,
            lr=1e-4,
            epochs=150,
            grad_clip=None,
            ema_decay=0.9999,
            ema_warmup=False,
            precision="auto",
            label_dropout=0.0,
            checkpoint_every=10_000,
            sample_every=10_000,
            log_every=100,
        ),
        DiffusionConfig(schedule="cosine", timesteps=1000, prediction="x0", variance="fixed_small"),
        SampleConfig(method="ddpm", steps=None),
    )


# --------------------------------------------------------------------------- Improved DDPM and conditional
@_preset(
    "cifar10-iddpm",
    "Nichol & Dhariwal 2021 CIFAR-10 (L_hybrid row of Table 2): `iddpm-cifar10` net (128 ch, 3 res blocks, "
    "attention at 16 and 8 with 4 heads, scale-shift norm, BigGAN up/down, dropout 0.3, 2·C outputs), cosine "
    "T=4000, learned-range variance, hybrid loss λ=0.001, batch 128, Adam 1e-4, EMA 0.9999, no clipping, 500k "
    "steps; sampled with 100 respaced ancestral steps (their §4).",
)
def _cifar10_iddpm() -> Config:
    return _cfg(
        "iddpm-cifar10",
        DataConfig(name="cifar10", image_size=32),
        TrainConfig(
            batch_size=128,
            lr=1e-4,
            grad_clip=None,
            ema_decay=0.9999,
            max_steps=500_000,
            checkpoint_every=10_000,
            sample_every=10_000,
            log_every=100,
        ),
        DiffusionConfig(
            schedule="cosine", timesteps=4000, variance="learned_range", loss="hybrid", vlb_weight=0.001
        ),
        SampleConfig(method="ddpm", steps=100),
    )


@_preset(
    "mnist-iddpm",
    "Improved DDPM on MNIST: the `mnist` net with scale-shift norm, BigGAN up/down and 2·C outputs, cosine T=1000 "
    "(not 4000: bits/dim evaluation costs T passes), learned-range variance, hybrid loss λ=0.001, batch 128, "
    "Adam 2e-4 with 500 warm-up steps, 20 epochs (the lesson's budget), EMA 0.9999; 50 respaced ancestral steps.",
)
def _mnist_iddpm() -> Config:
    return _cfg(
        "mnist",
        DataConfig(name="mnist", image_size=32, val_fraction=0.1),
        TrainConfig(
            batch_size=128,
            lr=2e-4,
            warmup_steps=500,
            epochs=20,
            checkpoint_every=2000,
            sample_every=2000,
            val_every=1000,
        ),
        DiffusionConfig(schedule="cosine", timesteps=1000, variance="learned_range", loss="hybrid"),
        SampleConfig(method="ddpm", steps=50),
        out_channels=2,
        use_scale_shift_norm=True,
        resblock_updown=True,
    )


@_preset(
    "cifar10-cond",
    "Class-conditional CIFAR-10 with classifier-free guidance (Ho & Salimans 2022): cifar10-iddpm with a 10-class "
    "embedding added to the time embedding (AdaGN), label dropout 0.1 to the null label; guidance w=0.3 (their "
    "FID-optimal range) on 100 respaced ancestral steps.",
)
def _cifar10_cond() -> Config:
    cfg = _cifar10_iddpm()
    return replace(
        cfg,
        model=replace(cfg.model, num_classes=10),
        train=replace(cfg.train, label_dropout=0.1),
        sample=replace(cfg.sample, guidance=0.3),
    )


@_preset(
    "mnist-cond",
    "Class-conditional MNIST in CPU-minutes (benchmarks/conditional_mnist.py): the mnist-cpu recipe (32-ch net, "
    "28×28, cosine T=1000, lr 2e-3 decayed, bf16) with a 10-class embedding, scale-shift norm and label dropout 0.15 for "
    "classifier-free guidance; ancestral sampling, 25 steps, at guidance w=1.",
)
def _mnist_cond() -> Config:
    cfg = _mnist_cpu()
    return replace(
        cfg,
        model=replace(cfg.model, num_classes=10, use_scale_shift_norm=True),
        train=replace(cfg.train, label_dropout=0.15),
        sample=replace(cfg.sample, guidance=1.0),
    )
