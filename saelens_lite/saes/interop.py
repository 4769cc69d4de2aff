"""Import and export of SAE folders written by the peer libraries, SAELens and EleutherAI sparsify.

Shape legend: D model width (d_in), F features (d_sae).

Formats (each a folder; the format is detected from the files it holds):

* ``native``   -- ours: ``cfg.json`` (with ``format_version``) + ``sae.safetensors``.
* ``saelens``  -- SAELens >= 6 (``SAE.save_model`` / ``SAE.load_from_disk``): ``cfg.json`` +
  ``sae_weights.safetensors`` with W_enc (D, F), b_enc (F,), W_dec (F, D), b_dec (D,) and, for
  jumprelu, threshold (F,). Every SAELens SAE computes
  ``pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc``, the same pre-bias form as ours.
* ``sparsify`` -- EleutherAI sparsify (``SparseCoder.save_to_disk`` / ``load_from_disk``): one
  folder per hook point with ``cfg.json`` (d_in, num_latents, k, ...) + ``sae.safetensors`` with
  encoder.weight (F, D), encoder.bias (F,), W_dec (F, D), b_dec (D,). Its encoder is
  ``TopK(ReLU((x - b_dec) @ encoder.weight.T + encoder.bias))``: only TopK SAEs fit.

Architecture mapping (ours -> theirs):
    relu -> saelens "standard";  topk -> saelens "topk", sparsify "topk";
    jumprelu -> saelens "jumprelu" (threshold = exp(log_threshold));
    batchtopk, matryoshka -> saelens "jumprelu" with a constant threshold, as SAELens itself saves
    BatchTopK and Matryoshka BatchTopK SAEs for inference (at inference Matryoshka is BatchTopK's
    function; metadata.training_architecture and training_architecture_details (k and the
    architecture's own SAEConfig fields, e.g. matryoshka_groups) let the import restore it);
    only with relative_threshold=False (a threshold relative to each token's RMS has no SAELens
    form).
Imports fold what SAELens keeps as config into the weights, so the imported SAE computes the same
function: ``rescale_acts_by_decoder_norm`` (decoder norms into the encoder),
``apply_b_dec_to_input=False`` (b_enc += b_dec @ W_enc) and a stored
``expected_average_only_in`` scaling factor (SAE.fold_input_scale_).

Writes are atomic: the folder is built under a temporary name beside the destination and renamed
into place, so a failure leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from saelens_lite.saes import REGISTRY, SAE, BatchTopKSAE, SAEConfig

log = logging.getLogger(__name__)

FORMATS = ("native", "saelens", "sparsify")
SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_FORMAT_VERSION = "6.0.0"
"""sae_lens_version written into exported cfg.json metadata: the folder layout is that of
SAELens 6 (older versions trigger SAELens's pre-6.0 key renaming on load)."""
SPARSIFY_WEIGHTS = "sae.safetensors"
NATIVE_WEIGHTS = "sae.safetensors"

# Our architecture -> the architecture name each format stores it under. A format missing from
# an architecture's entry cannot represent it.
EXPORT_NAMES: dict[str, dict[str, str]] = {
    "saelens": {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu",
                "batchtopk": "jumprelu", "matryoshka": "jumprelu"},
    "sparsify": {"topk": "topk"},
}
_SAELENS_IMPORT = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}


class UnsupportedConversion(ValueError):
    """The source SAE's architecture has no representation in the requested format."""


def formats_supporting(architecture: str) -> list[str]:
    """Formats that can store an SAE of `architecture` (native stores every registered one)."""
    return ["native"] + [f for f, names in EXPORT_NAMES.items() if architecture in names]


# ---------------------------------------------------------------- detection
def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _sparsify_hook_dirs(path: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in path.iterdir()
                  if p.is_dir() and (p / "cfg.json").is_file() and (p / SPARSIFY_WEIGHTS).is_file())


def resolve(path: str | pathlib.Path, hook: str | None = None) -> tuple[str, pathlib.Path]:
    """(format, SAE folder) for `path`. A sparsify run folder (one sub-folder per hook) resolves
    to its only hook folder, or to `hook` when given."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such SAE folder")
    if hook is not None:
        sub = path / hook
        if not sub.is_dir():
            have = [p.name for p in _sparsify_hook_dirs(path)]
            raise FileNotFoundError(f"{path}: no hook folder {hook!r}; found {have}")
        return resolve(sub)
    cfg_path = path / "cfg.json"
    if cfg_path.is_file():
        if (path / SAELENS_WEIGHTS).is_file():
            return "saelens", path
        if (path / NATIVE_WEIGHTS).is_file():
            cfg = _read_json(cfg_path)
            if "format_version" in cfg and "architecture" in cfg:
                return "native", path
            if "num_latents" in cfg or "expansion_factor" in cfg:
                return "sparsify", path
            raise ValueError(f"{cfg_path}: neither a saelens_lite config (format_version, "
                             "architecture) nor a sparsify one (num_latents, k)")
    subs = _sparsify_hook_dirs(path)
    if len(subs) == 1:
        return resolve(subs[0])
    if subs:
        raise ValueError(f"{path} holds several hook folders {[p.name for p in subs]}; "
                         "pick one with hook=... (CLI: --hook)")
    raise ValueError(
        f"{path}: unknown SAE folder; expected cfg.json with {NATIVE_WEIGHTS} (saelens_lite or "
        f"sparsify) or {SAELENS_WEIGHTS} (SAELens)")


def detect_format(path: str | pathlib.Path) -> str:
    """"native", "saelens" or "sparsify" for an SAE folder (see `resolve`)."""
    return resolve(path)[0]


# ---------------------------------------------------------------- import
def _dtype_name(dtype: str | torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in ("float32", "float64", "float16", "bfloat16"):
        raise ValueError(f"unsupported dtype {dtype!r}")
    return name


def _build(arch: str, d_in: int, d_sae: int, tensors: dict[str, Tensor], dtype: str, **cfg_kw
           ) -> SAE:
    """An SAE of `arch` holding `tensors` (W_enc (D,F), b_enc, W_dec (F,D), b_dec [+ extra])."""
    cfg = SAEConfig.build(architecture=arch, d_in=d_in, d_sae=d_sae, dtype=dtype, **cfg_kw)
    sae = SAE.from_config(cfg)
    state = sae.state_dict()
    want = {name: t.shape for name, t in state.items()}
    for name, t in tensors.items():
        if name not in want:
            raise ValueError(f"{arch} SAE has no tensor {name!r}")
        if t.shape != want[name]:
            raise ValueError(f"tensor {name}: shape {tuple(t.shape)}, expected "
                             f"{tuple(want[name])} for d_in={d_in}, d_sae={d_sae}")
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise ValueError(f"missing tensors {missing} for a {arch} SAE")
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t.to(state[name].dtype))  # copy_ keeps W_enc's layout
    return sae


def _load_saelens(path: pathlib.Path) -> SAE:
    cfg = _read_json(path / "cfg.json")
    meta = cfg.get("metadata") or {}
    # SAELens < 6 kept these at the top level under older names.
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or ""
    model = meta.get("model_name") or cfg.get("model_name") or ""
    arch = cfg.get("architecture", "standard")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch == "standard" and cfg.get("activation_fn") == "topk" and k:
        arch = "topk"
    if arch not in _SAELENS_IMPORT:
        raise UnsupportedConversion(
            f"{path}: SAELens architecture {arch!r} has no saelens_lite equivalent; "
            f"supported: {sorted(_SAELENS_IMPORT)}")
    if cfg.get("reshape_activations", "none") != "none":
        raise UnsupportedConversion(f"{path}: reshape_activations="
                                    f"{cfg['reshape_activations']!r} is not supported")
    norm = cfg.get("normalize_activations", "none") or "none"
    scale = None
    if norm == "expected_average_only_in":
        scaler = path / "activation_scaler.json"
        scale = _read_json(scaler).get("scaling_factor") if scaler.is_file() else None
        if scale is None:
            raise UnsupportedConversion(
                f"{path}: normalize_activations='expected_average_only_in' but no "
                "activation_scaler.json with a scaling_factor; fold it in SAELens first "
                "(sae.fold_activation_norm_scaling_factor)")
    elif norm != "none":
        raise UnsupportedConversion(
            f"{path}: normalize_activations={norm!r} depends on each input and has no "
            "saelens_lite equivalent; supported: 'none', 'expected_average_only_in'")

    raw = load_file(str(path / SAELENS_WEIGHTS))
    t = {n: raw[n].to(torch.float64) for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n in raw}
    missing = sorted({"W_enc", "b_enc", "W_dec", "b_dec"} - set(t))
    if missing:
        raise ValueError(f"{path / SAELENS_WEIGHTS}: missing tensors {missing}")
    if not cfg.get("apply_b_dec_to_input", True):
        # x @ W + b_enc  ==  (x - b_dec) @ W + (b_enc + b_dec @ W)
        t["b_enc"] = t["b_enc"] + t["b_dec"] @ t["W_enc"]
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        # TopK(pre * n) decoded with acts / n @ W_dec: fold n = ||W_dec rows|| into the encoder.
        n_F = t["W_dec"].norm(dim=1).clamp_min(1e-8)
        t["W_enc"], t["b_enc"] = t["W_enc"] * n_F, t["b_enc"] * n_F
        t["W_dec"] = t["W_dec"] / n_F[:, None]
    d_in, d_sae = t["W_enc"].shape
    kw: dict = {"hook_name": hook, "model_name": model}
    ours = _SAELENS_IMPORT[arch]
    if arch == "jumprelu":
        if "threshold" not in raw:
            raise ValueError(f"{path / SAELENS_WEIGHTS}: jumprelu SAE without 'threshold'")
        # SAELens computes ReLU(pre) * (pre > threshold): a negative threshold acts as 0.
        theta_F = raw["threshold"].to(torch.float64).clamp_min(0)
        trained_as = REGISTRY.get(meta.get("training_architecture", ""))
        if (trained_as is not None and issubclass(trained_as, BatchTopKSAE)
                and bool((theta_F == theta_F[0]).all())):
            ours = trained_as.architecture
            details = dict(meta.get("training_architecture_details") or {})
            k_avg = cfg.get("k") or details.pop("k", 32)
            kw["k"] = max(1, min(round(k_avg), d_sae))
            kw |= {f: v for f, v in details.items() if f.startswith(ours + "_")}
            kw["relative_threshold"] = False  # SAELens thresholds raw pre-activations
            t["threshold"] = theta_F[0].to(torch.float32)
        else:
            t["log_threshold"] = theta_F.log()  # log 0 = -inf: exp gives back exactly 0
    elif arch == "topk":
        # trained with rescaling: the folded rows are unit norm and stay so in a finetune
        kw["k"] = int(k)
        kw["decoder_norm"] = "unit" if cfg.get("rescale_acts_by_decoder_norm", False) else "free"
    sae = _build(ours, d_in, d_sae, t, _dtype_name(cfg.get("dtype", "float32")), **kw)
    if scale is not None:
        sae.fold_input_scale_(float(scale))
    return sae


def _load_sparsify(path: pathlib.Path) -> SAE:
    cfg = _read_json(path / "cfg.json")
    for flag in ("skip_connection", "transcode"):
        if cfg.get(flag):
            raise UnsupportedConversion(f"{path}: sparsify {flag}=True has no saelens_lite "
                                        "equivalent (only plain TopK SAEs convert)")
    if cfg.get("activation", "topk") != "topk":
        raise UnsupportedConversion(f"{path}: sparsify activation {cfg['activation']!r} has no "
                                    "saelens_lite equivalent; supported: 'topk'")
    with safe_open(str(path / SPARSIFY_WEIGHTS), framework="pt") as f:
        raw = {n: f.get_tensor(n) for n in f.keys()}
    missing = sorted({"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(raw))
    if missing:
        raise ValueError(f"{path / SPARSIFY_WEIGHTS}: missing tensors {missing}")
    W_FD = raw["encoder.weight"]
    d_sae, d_in = W_FD.shape
    if cfg.get("d_in", d_in) != d_in:
        raise ValueError(f"{path}: cfg d_in={cfg['d_in']} but encoder.weight is "
                         f"{tuple(W_FD.shape)}")
    # ReLU-then-TopK (theirs) and TopK-then-ReLU (ours) keep the same values.
    tensors = {"W_enc": W_FD.T, "b_enc": raw["encoder.bias"], "W_dec": raw["W_dec"],
               "b_dec": raw["b_dec"]}
    # sparsify names each SAE folder after its hook point (a module path such as "layers.9").
    return _build("topk", d_in, d_sae, tensors, _dtype_name(W_FD.dtype), k=int(cfg.get("k", 32)),
                  multi_topk=bool(cfg.get("multi_topk", False)), hook_name=path.name,
                  decoder_norm="unit" if cfg.get("normalize_decoder", True) else "free")


def load_any(path: str | pathlib.Path, *, hook: str | None = None,
             device: str | torch.device = "cpu") -> SAE:
    """Load an SAE folder in any supported format (detected from its files) as our SAE."""
    fmt, folder = resolve(path, hook)
    loaders: dict[str, Callable[[pathlib.Path], SAE]] = {
        "native": SAE.load, "saelens": _load_saelens, "sparsify": _load_sparsify}
    log.debug("loading %s as %s", folder, fmt)
    return loaders[fmt](folder).to(device)


# ---------------------------------------------------------------- export
def _cpu(t: Tensor) -> Tensor:
    return t.detach().cpu().contiguous()


def _write_saelens(sae: SAE, out: pathlib.Path) -> None:
    c = sae.cfg
    arch = EXPORT_NAMES["saelens"][sae.architecture]
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    meta = {"sae_lens_version": SAELENS_FORMAT_VERSION,
            "sae_lens_training_version": SAELENS_FORMAT_VERSION,
            "model_name": c.model_name or None, "hook_name": c.hook_name or None,
            "training_architecture": sae.architecture, "exported_by": "saelens_lite"}
    cfg = {"architecture": arch, "d_in": c.d_in, "d_sae": c.d_sae, "dtype": c.dtype,
           "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none", "metadata": meta}
    if arch == "topk":
        cfg |= {"k": c.k, "rescale_acts_by_decoder_norm": False}
    elif sae.architecture == "jumprelu":
        tensors["threshold"] = sae.threshold
    elif isinstance(sae, BatchTopKSAE):  # Matryoshka too: the same function at inference
        theta = float(sae.threshold)
        if c.relative_threshold:
            raise UnsupportedConversion(
                f"this {sae.architecture} SAE thresholds pre / r(x), relative to each token's RMS "
                "(SAEConfig.relative_threshold, the default); SAELens' JumpReLU has a fixed "
                "threshold per latent, which cannot express that. Train with "
                "--option relative_threshold=false (BatchTopKConfig(relative_threshold=False)) to export to SAELens")
        if theta < 0:
            raise UnsupportedConversion(
                f"{sae.architecture} SAE has no inference threshold yet (threshold < 0: never "
                "trained); SAELens stores BatchTopK as JumpReLU and needs one")
        tensors["threshold"] = torch.full((c.d_sae,), theta, dtype=sae.W_enc.dtype)
        # the architecture's own fields (matryoshka_groups, ...): inference ignores them
        own = {f: v for f, v in c.to_dict().items() if f.startswith(sae.architecture + "_")}
        meta["training_architecture_details"] = {"k": c.k} | own
    save_file({n: _cpu(v) for n, v in tensors.items()}, str(out / SAELENS_WEIGHTS))
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2))


def _write_sparsify(sae: SAE, out: pathlib.Path) -> None:
    c = sae.cfg
    cfg = {"activation": "topk", "expansion_factor": max(c.d_sae // c.d_in, 1),
           "normalize_decoder": sae.unit_norm_decoder, "num_latents": c.d_sae, "k": c.k,
           "multi_topk": c.multi_topk, "skip_connection": False, "transcode": False,
           "d_in": c.d_in}
    tensors = {"encoder.weight": sae.W_enc.T, "encoder.bias": sae.b_enc, "W_dec": sae.W_dec,
               "b_dec": sae.b_dec}
    save_file({n: _cpu(v) for n, v in tensors.items()}, str(out / SPARSIFY_WEIGHTS))
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2))


def _check_exportable(sae: SAE, to: str) -> None:
    if to not in FORMATS:
        raise ValueError(f"to={to!r}: unknown format; allowed: {list(FORMATS)}")
    if to != "native" and sae.architecture not in EXPORT_NAMES[to]:
        raise UnsupportedConversion(
            f"architecture {sae.architecture!r} cannot be written in the {to} format; formats "
            f"that support it: {formats_supporting(sae.architecture)}")
    if to != "native" and sae.is_transcoder:  # (the peers' SAE folders apply b_dec to the input)
        raise UnsupportedConversion(
            f"a transcoder ({sae.cfg.hook_name!r} -> {sae.cfg.target_hook!r}) cannot be written "
            f"in the {to} format yet; formats that support it: ['native']")


def export(sae: SAE, dst: str | pathlib.Path, *, to: str = "native",
           overwrite: bool = False) -> pathlib.Path:
    """Write `sae` as folder `dst` in format `to`, atomically (temp folder + rename)."""
    _check_exportable(sae, to)
    dst = pathlib.Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=True (CLI: --overwrite)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        with torch.no_grad():
            if to == "native":
                sae.save(tmp)
            else:
                {"saelens": _write_saelens, "sparsify": _write_sparsify}[to](sae, tmp)
        if dst.exists():  # overwrite: move the old folder aside first, drop it after the swap
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def convert(src: str | pathlib.Path, dst: str | pathlib.Path, *, to: str,
            hook: str | None = None, overwrite: bool = False) -> pathlib.Path:
    """Read SAE folder `src` (any format, detected) and write it to `dst` in format `to`."""
    if to not in FORMATS:
        raise ValueError(f"to={to!r}: unknown format; allowed: {list(FORMATS)}")
    sae = load_any(src, hook=hook)
    return export(sae, dst, to=to, overwrite=overwrite)

