"""Subprocess for the kill -9 resume test: ``python _train_crash_worker.py OUT_DIR MODE``.

MODE: ``full`` (an uninterrupted run), ``crash`` (the same run, slowed down so the test can kill
it after its first checkpoint) or ``resume`` (continue OUT_DIR from its newest checkpoint).
Every mode trains on the same synthetic data with one CPU thread, so runs are bit-comparable.
"""

import sys
import time

import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

from saelens_lite.saes import REGISTRY, SAEConfig  # noqa: E402
from saelens_lite.training import ArraySource, TrainConfig, train  # noqa: E402

D, F, B, STEPS = 16, 64, 64, 120


class SlowSource(ArraySource):
    """Sleeps before every batch so a checkpoint lands long before the end."""

    def batches(self, batch_size, *, seed, start_batch=0):
        for batch in super().batches(batch_size, seed=seed, start_batch=start_batch):
            time.sleep(0.03)
            yield batch


def config(out_dir: str, resume: bool) -> TrainConfig:
    arch = "topk" if "topk" in REGISTRY else sorted(REGISTRY)[0]
    return TrainConfig(sae=SAEConfig.build(architecture=arch, d_sae=F, k=4), lr=3e-3, batch_size=B, tokens=B * STEPS,
                       warmup_steps=10, decay="cosine", decay_fraction=0.3, sparsity_warmup_steps=20,
                       dead_window_tokens=B * 5, checkpoint_every=B * 15, log_every=5,
                       init_sample_tokens=512, out_dir=out_dir, resume=resume, progress=False, seed=3,
                       outlier_norm_ratio=1.5)  # clips some rows: the resumed cap must match


def main() -> None:
    out_dir, mode = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(123)
    x_ND = torch.randn(1000, D, generator=g) @ torch.randn(D, D, generator=g) + 2.0
    source = (SlowSource if mode == "crash" else ArraySource)({"x": x_ND})
    train(config(out_dir, resume=mode == "resume"), source)


if __name__ == "__main__":
    main()
