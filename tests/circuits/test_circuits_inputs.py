"""Bad input gives a one-line error naming the value: a layer without a transcoder, a coder of
another hook or model, another width, two for one layer, a folder without any, a multi-token
target; and ``saelens-lite trace`` end to end at tiny size (transcoders built in code and
saved)."""

import json
import subprocess
import sys

import pytest
import torch

from saelens_lite.circuits import attribute_graph, check_transcoders, load_transcoders
from saelens_lite.cli import main


def test_a_layer_without_a_transcoder_is_named(tiny_llama, transcoders):
    with pytest.raises(ValueError, match=r"no transcoder for layer\(s\) \[2\] of tiny-llama"):
        check_transcoders(transcoders(layers=[0, 1, 3]), tiny_llama)


def test_a_transcoder_of_another_hook_is_named(tiny_llama, transcoders):
    saes = transcoders()
    saes["tc1"] = transcoders(layers=[1], hook="blocks.1.hook_resid_pre")["tc1"]
    with pytest.raises(ValueError, match=r"tc1: transcoder 'blocks.1.hook_resid_pre' -> "
                                         r"'blocks.1.hook_mlp_out' does not replace one block's MLP"):
        check_transcoders(saes, tiny_llama)


def test_an_sae_is_not_a_transcoder(tiny_llama, transcoders):
    from saelens_lite.saes import SAE, SAEConfig

    saes = transcoders()
    saes["tc2"] = SAE.from_config(SAEConfig.build(architecture="topk", d_in=64, d_sae=32, k=2,
                                            hook_name="blocks.2.hook_mlp_in"))
    with pytest.raises(ValueError, match=r"tc2: an SAE of blocks.2.hook_mlp_in \(no target_hook\)"):
        check_transcoders(saes, tiny_llama)


def test_a_transcoder_of_another_model_is_named(tiny_llama, transcoders):
    saes = transcoders()
    saes["tc3"] = transcoders(layers=[3], model_name="smollm2-135m")["tc3"]
    with pytest.raises(ValueError, match=r"tc3: trained on model_name='smollm2-135m', not 'tiny-llama'"):
        check_transcoders(saes, tiny_llama)


def test_another_width_and_two_for_one_layer_are_named(tiny_llama, transcoders):
    saes = transcoders()
    saes["tc0"] = transcoders(layers=[0], d_in=32)["tc0"]
    with pytest.raises(ValueError, match=r"tc0: d_in=32 but tiny-llama has width 64"):
        check_transcoders(saes, tiny_llama)
    saes = transcoders() | {"again": transcoders(layers=[1])["tc1"]}
    with pytest.raises(ValueError, match=r"two transcoders for layer 1: tc1 and again"):
        check_transcoders(saes, tiny_llama)


def test_a_folder_without_transcoders_is_named(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match=r"holds no transcoder folder"):
        load_transcoders(tmp_path, tiny_llama)
    with pytest.raises(ValueError, match=r"is not a folder"):
        load_transcoders(tmp_path / "nope", tiny_llama)


def test_a_target_longer_than_one_token_is_named(tiny_llama, transcoders):
    tcs = check_transcoders(transcoders(), tiny_llama)
    with pytest.raises(ValueError, match=r"target 'ab' is 2 tokens"):
        attribute_graph(tiny_llama, tcs, "abc", target="ab")


def saved(transcoders, root, layers=range(4)):
    for name, sae in transcoders(layers=layers).items():
        sae.save(root / f"run_{name}" / sae.cfg.hook_name)
    return root


def test_cli_trace_writes_the_graph(transcoders, tmp_path, capsys):
    root = saved(transcoders, tmp_path / "tcs")
    out = tmp_path / "graphs" / "abc.json"
    assert main(["trace", "--model", "tiny-llama", "--transcoders", str(root), "--prompt", "abc ab",
                 "--target", "b", "--node-threshold", "0.9", "--check", "3", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["metadata"]["slug"] == "abc" and doc["metadata"]["node_threshold"] == 0.9
    assert len(doc["metadata"]["transcoder_list"]) == 4
    assert [n["clerp"] for n in doc["nodes"] if n["feature_type"] == "logit"] == [
        next(n["clerp"] for n in doc["nodes"] if n["is_target_logit"])]
    model, spliced = doc["metadata"]["intervention_check"], doc["metadata"]["intervention_check_spliced"]
    assert len(model["edges"]) == len(spliced["edges"]) == 6
    assert (model["freeze"], spliced["freeze"]) == ([], False)
    text = capsys.readouterr().out
    assert "intervention check over 6 edges" in text and "in the model itself" in text
    assert "replacement score" in text and "completeness score" in text and str(out) in text


def test_cli_trace_check_runs_the_clean_forwards_once(transcoders, tmp_path, tiny_llama):
    """`--check N` adds the forwards of one clean_state and of the two checks given it, counted by
    a global forward hook on the model class (the CLI loads its own copy)."""
    from saelens_lite.circuits.intervene import clean_state, intervention_check
    from saelens_lite.circuits.trace import TraceConfig, trace

    root = saved(transcoders, tmp_path / "tcs")
    argv = ["trace", "--model", "tiny-llama", "--transcoders", str(root), "--prompt", "abc ab", "--target", "b",
            "--node-threshold", "0.9", "--out", str(tmp_path / "g.json")]
    model_class = type(tiny_llama.model)
    calls: list[int] = []

    def forwards(fn) -> int:
        n = len(calls)
        fn()
        return len(calls) - n

    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, *_: calls.append(1) if type(m) is model_class else None)
    try:
        added = forwards(lambda: main([*argv, "--check", "3"])) - forwards(lambda: main([*argv, "--check", "0"]))
        lm, tcs = tiny_llama, load_transcoders(root, tiny_llama)
        graph = trace(lm, tcs, "abc ab", TraceConfig(target="b", node_threshold=0.9)).graph
        box = {}
        n_clean = forwards(lambda: box.setdefault("state", clean_state(lm, tcs, "abc ab")))
        n_checks = sum(forwards(lambda f=f: intervention_check(lm, tcs, graph, top=3, freeze=f, state=box["state"]))
                       for f in ((), False))
    finally:
        handle.remove()
    assert n_clean >= 1 and added == n_clean + n_checks


@pytest.mark.parametrize("argv, message", [
    (["--target", "ab"], "target 'ab' is 2 tokens"),
    (["--edge-threshold", "2"], "TraceConfig.edge_threshold=2.0 is invalid"),
])
def test_cli_bad_input_is_one_line(transcoders, tmp_path, capsys, argv, message):
    root = saved(transcoders, tmp_path / "tcs")
    code = main(["trace", "--model", "tiny-llama", "--transcoders", str(root), "--prompt", "abc",
                 "--out", str(tmp_path / "g.json"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("saelens-lite trace: error:") and message in err
    assert "\n" not in err


def test_cli_missing_layers_need_the_flag(transcoders, tmp_path, capsys):
    root = saved(transcoders, tmp_path / "tcs", layers=[0, 2])
    args = ["trace", "--model", "tiny-llama", "--transcoders", str(root), "--prompt", "abc",
            "--out", str(tmp_path / "g.json")]
    assert main(args) == 2
    assert "no transcoder for layer(s) [1, 3]" in capsys.readouterr().err
    assert main(args + ["--allow-missing-layers"]) == 0
    assert "through 2 of 4 layers' transcoders" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_trace_in_a_subprocess(transcoders, tmp_path):
    root = saved(transcoders, tmp_path / "tcs")
    out = tmp_path / "g.json"
    proc = subprocess.run([sys.executable, "-m", "saelens_lite", "trace", "--model", "tiny-llama",
                           "--transcoders", str(root), "--prompt", "hello", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["nodes"]
