"""Import/export of SAELens and sparsify folders, checked against the real libraries.

The oracle tests run tests/saes/_peer_roundtrip.py once per session under an interpreter that has
sae_lens and sparsify (SAELENS_LITE_PEERS_PYTHON, .venv-peers/bin/python, /work/peers-venv,
or this one): it loads our exported folders with SAE.load_from_disk / SparseCoder.load_from_disk
and writes SAEs with save_model / save_to_disk, saving encode/decode outputs for us to compare.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
import torch
from helpers import no_peers, python_with
from safetensors.torch import load_file, save_file

from saelens_lite.saes import REGISTRY, SAE, BatchTopKSAE, SAEConfig, interop
from saelens_lite.saes.interop import (
    EXPORT_NAMES,
    UnsupportedConversion,
    convert,
    detect_format,
    export,
    load_any,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "saes" / "_peer_roundtrip.py"
D, F, K, B = 16, 64, 8, 32
ATOL = 1e-5
# (format, our architecture) pairs each peer format can hold, read from the export table.
PAIRS = [(fmt, arch) for fmt, names in EXPORT_NAMES.items() for arch in sorted(names)]
# SAEs the peer libraries write for us to import: (lib, their arch, options, our arch).
PEER_WRITES = [
    ("saelens", "standard", {}, "relu"),
    ("saelens", "standard", {"apply_b_dec_to_input": False}, "relu"),
    ("saelens", "topk", {}, "topk"),
    ("saelens", "topk", {"rescale_acts_by_decoder_norm": True}, "topk"),
    ("saelens", "jumprelu", {}, "jumprelu"),
    ("saelens", "batchtopk", {}, "batchtopk"),
    ("sparsify", "topk", {}, "topk"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def make(arch: str, **kw) -> SAE:
    """A small SAE with random non-trivial weights (biases, thresholds) in every slot."""
    torch.manual_seed(0)
    if issubclass(REGISTRY[arch], BatchTopKSAE):  # the peers' BatchTopK: a threshold on raw pre-activations
        kw.setdefault("relative_threshold", False)
    sae = SAE.from_config(SAEConfig.build(architecture=arch, d_in=D, d_sae=F, k=K,
                                    hook_name="blocks.1.hook_resid_post", model_name="tiny", **kw))
    if not hasattr(sae, "W_enc"):  # a registered non-linear model: native format only
        return sae
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, F) * 0.3)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
        sae.W_dec.copy_(torch.randn(F, D) * 0.3)
        if arch == "jumprelu":
            sae.log_threshold.copy_((torch.rand(F) * 0.5 + 0.01).log())
        if issubclass(REGISTRY[arch], BatchTopKSAE):
            sae.threshold.fill_(0.2)
    return sae


def inputs() -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(1))


def outputs(sae: SAE, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        acts = sae.encode(x)
        return acts.numpy(), sae.decode(acts).numpy()


# ---------------------------------------------------------------- without the peers
@pytest.mark.parametrize("fmt,arch", PAIRS + [("native", a) for a in sorted(REGISTRY)])
def test_export_then_import_computes_the_same_function(tmp_path, fmt, arch):
    sae, x = make(arch), inputs()
    out = export(sae, tmp_path / "out", to=fmt)
    assert detect_format(out) == fmt
    back = load_any(out)
    assert back.architecture == arch
    assert back.cfg.k == sae.cfg.k or arch in ("relu", "jumprelu")
    for ours, theirs in zip(outputs(sae, x), outputs(back, x)):
        np.testing.assert_allclose(theirs, ours, atol=ATOL)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
@pytest.mark.parametrize("norm", ["unit", "free"])
def test_a_topk_export_comes_back_with_its_decoder_rule(tmp_path, fmt, norm):
    """sparsify keeps the rule (normalize_decoder), so a finetune of the import keeps it.
    SAELens' TopK without rescaling is the only export that is the same function for rows of
    any norm (a trained SAE's rows are 1/c after fold_input_scale_), so both come back free;
    a SAELens TopK trained with rescaling comes back unit (test_we_import_what_the_peer_library_wrote)."""
    sae = make("topk", decoder_norm=norm)
    back = load_any(export(sae, tmp_path / "o", to=fmt))
    want = "free" if fmt == "saelens" else norm
    assert back.cfg.decoder_norm == want and back.unit_norm_decoder == (want == "unit")
    x = inputs()
    for ours, theirs in zip(outputs(sae, x), outputs(back, x)):
        np.testing.assert_allclose(theirs, ours, atol=ATOL)


def test_saelens_cfg_has_the_keys_saelens_reads(tmp_path):
    cfg = json.loads((export(make("topk"), tmp_path / "o", to="saelens") / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == K
    assert (cfg["d_in"], cfg["d_sae"], cfg["apply_b_dec_to_input"]) == (D, F, True)
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["sae_lens_version"] >= "6"  # else SAELens renames pre-6.0 keys
    assert set(load_file(str(tmp_path / "o" / "sae_weights.safetensors"))) == {
        "W_enc", "b_enc", "W_dec", "b_dec"}


def test_batchtopk_goes_to_saelens_as_jumprelu_with_its_threshold(tmp_path):
    out = export(make("batchtopk"), tmp_path / "o", to="saelens")
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "jumprelu"
    torch.testing.assert_close(load_file(str(out / "sae_weights.safetensors"))["threshold"],
                               torch.full((F,), 0.2))


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "batchtopk"])
def test_sparsify_refuses_non_topk_naming_the_formats_that_work(tmp_path, arch):
    with pytest.raises(UnsupportedConversion, match=arch) as e:
        export(make(arch), tmp_path / "o", to="sparsify")
    assert "native" in str(e.value) and "saelens" in str(e.value)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_untrained_batchtopk_cannot_become_a_jumprelu(tmp_path):
    sae = make("batchtopk")
    sae.threshold.fill_(-1.0)
    with pytest.raises(UnsupportedConversion, match="threshold"):
        export(sae, tmp_path / "o", to="saelens")
    assert not any(tmp_path.iterdir())


def test_relative_threshold_batchtopk_refuses_saelens_naming_the_fix(tmp_path):
    """A threshold relative to each token's RMS has no fixed-threshold JumpReLU form."""
    with pytest.raises(UnsupportedConversion, match="relative_threshold=false"):
        export(make("batchtopk", relative_threshold=True), tmp_path / "o", to="saelens")
    assert not any(tmp_path.iterdir())
    sae = load_any(export(make("batchtopk"), tmp_path / "raw", to="saelens"))
    assert sae.architecture == "batchtopk" and not sae.cfg.relative_threshold


def test_matryoshka_goes_to_saelens_as_jumprelu_and_comes_back_with_its_groups(tmp_path):
    sae, x = make("matryoshka", matryoshka_groups=[0.25, 0.75], matryoshka_weights=[2.0, 1.0]), inputs()
    out = export(sae, tmp_path / "o", to="saelens")
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["training_architecture"] == "matryoshka"
    back = load_any(out)
    assert back.architecture == "matryoshka" and back.cfg.k == K
    assert (back.widths, back.weights) == ([16, 64], [2.0, 1.0])
    for ours, theirs in zip(outputs(sae, x), outputs(back, x)):
        np.testing.assert_allclose(theirs, ours, atol=ATOL)
    with pytest.raises(UnsupportedConversion, match="matryoshka SAE thresholds"):
        export(make("matryoshka", relative_threshold=True), tmp_path / "rel", to="saelens")


def test_a_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    def boom(tensors, path):  # a half-written weights file, then the disk fills up
        pathlib.Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(interop, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        export(make("topk"), tmp_path / "o", to="saelens")
    assert not any(tmp_path.iterdir())


def test_bad_input_writes_nothing(tmp_path):
    src = export(make("topk"), tmp_path / "src", to="saelens")
    w = load_file(str(src / "sae_weights.safetensors"))
    del w["b_enc"]
    save_file(w, str(src / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="b_enc"):
        convert(src, tmp_path / "dst", to="native")
    assert not (tmp_path / "dst").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_existing_destination_needs_overwrite(tmp_path):
    a = export(make("topk"), tmp_path / "o", to="native")
    with pytest.raises(FileExistsError):
        export(make("relu"), a, to="native")
    export(make("relu"), a, to="saelens", overwrite=True)
    assert detect_format(a) == "saelens" and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_sparsify_run_folder_resolves_its_hook(tmp_path):
    export(make("topk"), tmp_path / "run" / "layers.1", to="sparsify")
    assert load_any(tmp_path / "run").cfg.hook_name == "layers.1"
    export(make("topk"), tmp_path / "run" / "layers.2", to="sparsify")
    with pytest.raises(ValueError, match="layers.1"):
        load_any(tmp_path / "run")
    assert load_any(tmp_path / "run", hook="layers.2").cfg.hook_name == "layers.2"


def test_unknown_folder_names_the_expected_files(tmp_path):
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(ValueError, match="sae_weights.safetensors"):
        detect_format(tmp_path)


def test_cli_convert_round_trip(tmp_path, capsys):
    from saelens_lite.cli import main

    make("topk").save(tmp_path / "native")
    assert main(["convert", "--to", "sparsify", str(tmp_path / "native"),
                 str(tmp_path / "sp" / "layers.1")]) == 0
    assert main(["convert", "--to", "native", str(tmp_path / "sp"), str(tmp_path / "back")]) == 0
    assert "sparsify" in capsys.readouterr().out
    x = inputs()
    np.testing.assert_allclose(outputs(SAE.load(tmp_path / "back"), x)[1],
                               outputs(make("topk"), x)[1], atol=ATOL)
    assert main(["convert", "--to", "sparsify", str(tmp_path / "native"),
                 str(tmp_path / "sp" / "layers.1")]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    make("relu").save(tmp_path / "relu")
    assert main(["convert", "--to", "sparsify", str(tmp_path / "relu"), str(tmp_path / "y")]) == 2
    assert "formats that support it" in capsys.readouterr().err


# ---------------------------------------------------------------- against the real libraries
@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    """Run every oracle task in one peer process (importing sae_lens takes ~10 s)."""
    python = python_with("import importlib.util as u, sys; "
                         "sys.exit(0 if u.find_spec('sae_lens') and u.find_spec('sparsify') else 1)")
    if python is None:
        env = os.environ.get("SAELENS_LITE_PEERS_PYTHON")
        no_peers(f"SAELENS_LITE_PEERS_PYTHON={env} lacks sae_lens/sparsify" if env else
                 "no interpreter with sae_lens and sparsify (.venv-peers, /work/peers-venv, "
                 "this one): run `make peers-venv` or set SAELENS_LITE_PEERS_PYTHON")
    root = tmp_path_factory.mktemp("peers")
    x = inputs()
    np.save(root / "x.npy", x.numpy())
    tasks = []
    for fmt, arch in PAIRS:
        folder = export(make(arch), root / f"ours-{fmt}-{arch}", to=fmt)
        tasks.append({"op": "load", "lib": fmt, "path": str(folder),
                      "out": str(root / f"load-{fmt}-{arch}")})
    for i, (lib, arch, opts, _) in enumerate(PEER_WRITES):
        tasks.append({"op": "write", "lib": lib, "arch": arch, "options": opts, "d_in": D,
                      "d_sae": F, "k": K, "seed": i, "path": str(root / f"theirs-{i}"),
                      "out": str(root / f"write-{i}")})
    (root / "job.json").write_text(json.dumps({"x": str(root / "x.npy"), "tasks": tasks}))
    r = subprocess.run([python, str(WORKER), str(root / "job.json")], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"peer worker failed:\n{r.stdout}\n{r.stderr[-4000:]}"
    return root, x


def _theirs(prefix: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    return np.load(f"{prefix}.acts.npy"), np.load(f"{prefix}.recon.npy")


@pytest.mark.slow  # the peer libraries run in a process
@pytest.mark.parametrize("fmt,arch", PAIRS)
def test_peer_library_loads_our_export_and_agrees(peers, fmt, arch):
    root, x = peers
    acts, recon = _theirs(root / f"load-{fmt}-{arch}")
    ours_acts, ours_recon = outputs(make(arch), x)
    assert (ours_acts != 0).sum() > B  # the comparison is not vacuous
    np.testing.assert_allclose(acts, ours_acts, atol=ATOL)
    np.testing.assert_allclose(recon, ours_recon, atol=ATOL)


@pytest.mark.slow  # the peer libraries run in a process
@pytest.mark.parametrize("i", range(len(PEER_WRITES)),
                         ids=[f"{w[0]}-{w[1]}{'-' + '-'.join(w[2]) if w[2] else ''}"
                              for w in PEER_WRITES])
def test_we_import_what_the_peer_library_wrote(peers, i):
    root, x = peers
    sae = load_any(root / f"theirs-{i}")
    assert sae.architecture == PEER_WRITES[i][3]
    acts, recon = _theirs(root / f"write-{i}")
    ours_acts, ours_recon = outputs(sae, x)
    assert (acts != 0).sum() > B
    np.testing.assert_allclose(ours_acts, acts, atol=ATOL)
    np.testing.assert_allclose(ours_recon, recon, atol=ATOL)
    if sae.architecture == "topk":  # the rule its decoder was trained under, for a finetune
        lib, _, opts, _ = PEER_WRITES[i]
        unit = opts.get("rescale_acts_by_decoder_norm", False) if lib == "saelens" else True
        assert sae.cfg.decoder_norm == ("unit" if unit else "free")


@pytest.mark.parametrize("env,fails", [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "false"}, False),
    ({"SAELENS_LITE_REQUIRE_PEERS": "1"}, True),
    ({"SAELENS_LITE_REQUIRE_PEERS": "0"}, False),
])
def test_missing_peers_skip_by_hand_and_fail_under_ci_or_make_test(monkeypatch, env, fails):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("SAELENS_LITE_REQUIRE_PEERS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    outcome = pytest.fail.Exception if fails else pytest.skip.Exception
    with pytest.raises(outcome, match="no interpreter"):
        no_peers("no interpreter with sae_lens")


def test_make_test_requires_the_peers():
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("test:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line)
    pytest_at = next(i for i, line in enumerate(recipe) if "pytest" in line)
    assert "SAELENS_LITE_REQUIRE_PEERS=1" in recipe[pytest_at], recipe
    # `make test` builds them first: a prerequisite, or a sub-make before pytest
    before = lines[start].split() + [w for line in recipe[:pytest_at] if "$(MAKE)" in line for w in line.split()]
    assert "peers-venv" in before, recipe
