"""Oracle worker for tests/saes/test_interop.py, run under the peers' interpreter (SAELens + sparsify
installed; see requirements-peers.txt). It imports nothing from saelens_lite.

    python tests/saes/_peer_roundtrip.py JOB.json

JOB.json: {"x": "x.npy" (B, D) float32, "tasks": [...]}; each task writes npy files under its
"out" prefix: <out>.acts.npy (B, F) dense activations and <out>.recon.npy (B, D) decode(encode(x)).
  {"op": "load", "lib": "saelens"|"sparsify", "path": folder, "out": prefix}
      load a folder written by saelens_lite with the library's own loader and run it on x.
  {"op": "write", "lib": "saelens"|"sparsify", "arch": ..., "d_in", "d_sae", "k", "path",
   "out", "seed", "options": {...}}
      build an SAE with the library, give it random non-trivial weights, save it with the
      library's own saver (SAELens save_model / save_inference_model, sparsify save_to_disk)
      and run it on x. SAELens arch "batchtopk" is a BatchTopKTrainingSAE saved for inference
      (as jumprelu).
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore")


def _randomise_(params, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in params:
            if name in ("threshold", "topk_threshold"):
                continue
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
                    * (0.3 if p.ndim == 2 else 0.1))


def _dense(top_acts, top_idx, n_latents: int):
    out = torch.zeros(*top_acts.shape[:-1], n_latents, dtype=top_acts.dtype)
    return out.scatter_(-1, top_idx, top_acts)


def _run_saelens(sae, x):
    with torch.no_grad():
        acts = sae.encode(x.to(sae.dtype))
        return acts, sae.decode(acts)


def _run_sparsify(sae, x):
    with torch.no_grad():
        top_acts, top_idx, _ = sae.encode(x.to(sae.dtype))
        return _dense(top_acts, top_idx, sae.num_latents), sae.decode(top_acts, top_idx)


def _write_saelens(t, gen):
    import sae_lens

    opts = t.get("options", {})
    base = dict(d_in=t["d_in"], d_sae=t["d_sae"], dtype=t.get("dtype", "float32"),
                apply_b_dec_to_input=opts.get("apply_b_dec_to_input", True))
    arch = t["arch"]
    if arch == "standard":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(**base))
    elif arch == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(
            **base, k=t["k"],
            rescale_acts_by_decoder_norm=opts.get("rescale_acts_by_decoder_norm", False)))
    elif arch == "jumprelu":
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(**base))
    elif arch == "batchtopk":
        sae = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(**base, k=t["k"]))
    else:
        raise ValueError(f"unknown SAELens arch {arch}")
    _randomise_(sae.named_parameters(), gen)
    with torch.no_grad():
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(t["d_sae"], generator=gen) * 0.5)
        if arch == "batchtopk":
            sae.topk_threshold.fill_(0.2)
    if arch == "batchtopk":
        sae.save_inference_model(t["path"])
        sae = sae_lens.SAE.load_from_disk(t["path"])  # outputs of the saved (jumprelu) form
    else:
        sae.save_model(t["path"])
    return sae


def _write_sparsify(t, gen):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(t["d_in"], SparseCoderConfig(num_latents=t["d_sae"], k=t["k"]))
    _randomise_(sae.named_parameters(), gen)
    sae.set_decoder_norm_to_unit_norm()
    sae.save_to_disk(t["path"])
    return sae


def main(job_path: str) -> None:
    job = json.loads(open(job_path).read())
    x = torch.from_numpy(np.load(job["x"]))
    for t in job["tasks"]:
        if t["op"] == "load":
            if t["lib"] == "saelens":
                from sae_lens import SAE

                acts, recon = _run_saelens(SAE.load_from_disk(t["path"]), x)
            else:
                from sparsify import SparseCoder

                acts, recon = _run_sparsify(SparseCoder.load_from_disk(t["path"]), x)
        else:
            gen = torch.Generator().manual_seed(t.get("seed", 0))
            if t["lib"] == "saelens":
                acts, recon = _run_saelens(_write_saelens(t, gen), x)
            else:
                acts, recon = _run_sparsify(_write_sparsify(t, gen), x)
        np.save(t["out"] + ".acts.npy", acts.float().numpy())
        np.save(t["out"] + ".recon.npy", recon.float().numpy())
    print(f"ok: {len(job['tasks'])} tasks")


if __name__ == "__main__":
    main(sys.argv[1])
