"""FID during training (``train.fid_every``): every so many steps, ``train.fid_n`` images drawn from the EMA network
with the run's own sampler (``sample.method``/``sample.steps``) are scored against reference statistics.

The reference is ``train.fid_ref`` (a statistics ``.npz``, a folder or archive of images, or a dataset name) or, by
default, the run's training data itself (``data.name``/``data.root``/``data.split`` at the run's image size,
``train.fid_ref_n`` of its images): both sides are at the run's resolution, so the figure tracks progress; it is not
the budget benchmarks' FID (which pad MNIST to 32×32 and score against the test split). The reference statistics
are computed once and cached on disk (:func:`ddpm.metrics.refstats.reference_stats`), so a resumed run or a second
run on the same data reads them back; the Inception network is loaded once per run.

What keeps it from stalling training: it runs on rank 0 only, between steps, in inference mode and in the run's
precision (bf16 Inception features where the run trains in bf16); each evaluation's seconds are logged (``fid_s``;
the first also ``fid_ref_s``, the reference's) and counted in the run's time (``train.max_minutes`` included) but
not in its img/s; and when one evaluation takes more than a quarter of the training time since the previous
one, the run says so once, with what to change. Under torch.distributed the other ranks wait for rank 0 at the
next collective (well within the default collective timeouts for evaluations of minutes).

Each evaluation appends ``{"step", "fid", "fid_n", "fid_s", "best_fid", "best_fid_step"}`` to ``metrics.jsonl``
(and so to TensorBoard); a new best writes ``checkpoints/best-fid/`` (model and EMA weights with the config, a
directory ``ddpm sample --ckpt`` reads), replaced atomically at each improvement. The figures are the Fréchet
distance of Heusel et al. 2017 on Inception-v3 ``pool_3`` features (:mod:`ddpm.metrics.fid`), computed for
``fid_n`` ≤ 2048 by :func:`~ddpm.metrics.fid.frechet_distance_low_rank` (exact, an n×n eigenproblem instead of a
2048×2048 matrix square root); below 10,000 images FID is biased upward, so compare only figures made with the
same ``fid_n``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from ..checkpoint import CheckpointError, save_checkpoint

if TYPE_CHECKING:
    from ..metrics.fid import FeatureStats
    from ..metrics.inception import InceptionFeatures
    from ..nn.unet import UNet
    from .trainer import Trainer

__all__ = ["BEST_FID_DIR", "SHARE_WARNING", "FIDMonitor"]

BEST_FID_DIR = "best-fid"  # under checkpoints/
SHARE_WARNING = (
    0.25  # warn once when an evaluation takes more than this share of the training time between two
)


class FIDMonitor:
    """Scores the EMA network of ``tr`` every ``train.fid_every`` steps (see the module docstring)."""

    def __init__(self, tr: Trainer) -> None:
        self.tr = tr
        self.every = tr.config.train.fid_every
        self._extractor: InceptionFeatures | None = None
        self._ref: FeatureStats | None = None
        self._since = tr.clock()  # the end of the previous evaluation (or the start)
        self._warned = False

    def due(self) -> bool:
        """Whether the step just taken is one to evaluate at (rank 0 only)."""
        return bool(self.every) and self.tr.step % self.every == 0 and self.tr.dist.is_main

    def reference(self) -> FeatureStats:
        """The reference statistics (computed or read from the cache at the first call)."""
        if self._ref is None:
            from ..metrics.refstats import reference_stats

            tc, d = self.tr.config.train, self.tr.config.data
            if tc.fid_ref is not None:
                self._ref = reference_stats(tc.fid_ref, n=tc.fid_ref_n, extractor=self.extractor())
            else:
                self._ref = reference_stats(
                    d.name,
                    split=d.split,
                    root=d.root,
                    image_size=d.image_size,
                    n=tc.fid_ref_n,
                    extractor=self.extractor(),
                )
        return self._ref

    def extractor(self) -> InceptionFeatures:
        if self._extractor is None:
            from ..metrics.inception import InceptionFeatures

            tr = self.tr
            self._extractor = InceptionFeatures(
                device=tr.device, bf16=tr.precision == "bf16", threads=tr.config.train.threads
            )
        return self._extractor

    def evaluate(self) -> dict[str, Any]:
        """Sample, score and (on a new best) save ``checkpoints/best-fid``; returns the record it logged."""
        from ..metrics.fid import compute_stats, frechet_distance, frechet_distance_low_rank
        from ..pipeline import LoadedModel, generate

        tr, tc = self.tr, self.tr.config.train
        ref_s = None
        if self._ref is None:  # once per run (then a cache read on later runs): not part of fid_s
            t0 = tr.clock()
            self.reference()
            ref_s = tr.clock() - t0
        ref = self.reference()
        start = tr.clock()
        lm = LoadedModel(
            cast("UNet", tr.ema.model), tr.diffusion, tr.config, tr.step, tr.run_dir
        )  # in eval mode
        # Seeded by the step: an evaluation repeated at the same step draws the same images, and the training
        # randomness (its own generators) is untouched. Threads as training uses them (None: leave them).
        images = generate(lm, tc.fid_n, seed=tr.step, precision=tr.precision, threads=None)
        fake = compute_stats(images, self.extractor(), keep_features=True)
        feats = fake.features
        if feats is not None and len(feats) <= feats.shape[1]:  # fewer images than feature dimensions
            fid = frechet_distance_low_rank(feats, ref.mu, ref.sigma)
        else:
            fid = frechet_distance(fake.mu, fake.sigma, ref.mu, ref.sigma)
        seconds = tr.clock() - start
        improved = fid < tr.best_fid
        if improved:
            tr.best_fid, tr.best_fid_step = fid, tr.step
            try:
                save_checkpoint(
                    tr.ckpt_dir,
                    tr.step,
                    tr.config,
                    tr.model.state_dict(),
                    tr.ema.state_dict(),
                    name=BEST_FID_DIR,
                )
            except CheckpointError as e:  # like a periodic checkpoint: reported, and the run goes on
                tr.log(f"warning: {e}; the best-FID weights are saved at the next improvement")
        self._check_share(seconds, start - self._since - (ref_s or 0.0))
        self._since = tr.clock()
        rec: dict[str, Any] = {
            "step": tr.step,
            "fid": fid,
            "fid_n": tc.fid_n,
            "fid_s": seconds,
            "best_fid": tr.best_fid,
            "best_fid_step": tr.best_fid_step,
        }
        if ref_s is not None:
            rec["fid_ref_s"] = ref_s
        return rec

    def _check_share(self, seconds: float, trained_s: float) -> None:
        if self._warned or seconds <= SHARE_WARNING * max(trained_s, 0.0):
            return
        self._warned = True
        self.tr.log(
            f"warning: FID during training took {seconds:.0f} s against {trained_s:.0f} s of training since the "
            f"previous one: raise train.fid_every (now {self.every}) or lower train.fid_n (now "
            f"{self.tr.config.train.fid_n}) to keep it from slowing the run"
        )
