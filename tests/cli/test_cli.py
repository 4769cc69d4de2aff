"""The command line: help documents every flag with its default, subcommands call the API, and
errors are one clear line with a non-zero exit."""

import subprocess
import sys

import pytest

from saelens_lite.cli import build_parser, main


def test_harvest_help_lists_every_config_field_with_default(capsys):
    from dataclasses import fields

    from saelens_lite.cache.harvest import HarvestConfig

    with pytest.raises(SystemExit):
        main(["harvest", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for f in fields(HarvestConfig):
        assert "--" + f.name.replace("_", "-") in out
    assert "(default: 128)" in out and "(default: builtin:pydocs)" in out
    assert "Tokens per packed context" in out  # the field docstring is the help text


@pytest.mark.parametrize("command", [["train"], ["compare"], ["bench", "synthetic"]])
def test_help_lists_every_architectures_own_options_with_default(command, capsys):
    import dataclasses

    from saelens_lite.saes.config import SAEConfig, architectures, config_class

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    epilog = out[out.index("architecture options"):]
    shared = {f.name for f in dataclasses.fields(SAEConfig)}
    for arch in architectures():
        for f in dataclasses.fields(config_class(arch)):
            if f.name not in shared:  # generated from the dataclass: name, JSON default
                assert f"{f.name}=" in epilog, (arch, f.name)
    assert "matryoshka_groups=null" in epilog and "l1_coeff=5.0" in epilog
    assert "MatryoshkaConfig (matryoshka)" in epilog


def test_hooks_lists_uniform_names_with_widths(capsys):
    assert main(["hooks", "--model", "tiny-gpt2"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.hook_resid_pre" in out and "blocks.3.hook_mlp_out" in out
    assert "blocks.3.hook_mlp_in" in out and "pre  transformer.h.3.mlp" in out


def test_harvest_then_info(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Some English text about features and activations. " * 50)
    out = tmp_path / "cache"
    assert main(["harvest", "--model", "tiny-llama", "--hooks", "blocks.0.hook_resid_post", "blocks.1.hook_attn_out",
                 "--dataset", str(corpus), "--tokens", "200", "--context-size", "32", "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["info", str(out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "blocks.1.hook_attn_out" in text and "checksums: ok" in text


def test_unknown_hook_is_one_line_error_with_suggestion(tmp_path, capsys):
    code = main(["harvest", "--model", "tiny-llama", "--hooks", "blocks.0.hook_resid_pots", "--out", str(tmp_path / "x"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "blocks.0.hook_resid_post" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_choice_is_rejected_by_the_parser():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["harvest", "--out", "x", "--dtype", "float8"])


@pytest.mark.slow  # starts a process
def test_python_dash_m_entry_point_builds_its_parser_without_transformers():
    """``-X importtime`` lists every module imported on stderr: the parser (every subcommand's
    options) must not import transformers, which alone took ~1.8 s of a 3.7 s ``--help``."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "saelens_lite", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "harvest" in r.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    # (importlib.import_module, which loads the subcommands, is not timed; what they import is)
    assert "saelens_lite.cli._interventions_common" in imported and "torch" in imported
    assert not {m for m in imported if m.split(".")[0] == "transformers"}


def test_a_corrupt_cache_is_one_line_and_the_traceback_is_one_switch_away(tmp_path, capsys, monkeypatch):
    from saelens_lite.cache import CacheCorruptError

    corpus = tmp_path / "c.txt"
    corpus.write_text("Some English text about features and activations. " * 20)
    out = tmp_path / "cache"
    assert main(["harvest", "--model", "tiny-llama", "--hooks", "blocks.0.hook_resid_post", "--dataset", str(corpus),
                 "--tokens", "100", "--context-size", "32", "--out", str(out), "--no-progress"]) == 0
    shard = sorted(out.glob("acts/*/shard_*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:-1])
    capsys.readouterr()
    monkeypatch.delenv("SAELENS_LITE_DEBUG", raising=False)
    assert main(["info", str(out)]) == 2  # an OSError of the input, not a crash
    err = capsys.readouterr().err
    assert err.startswith("saelens-lite info: error: ") and shard.name in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(CacheCorruptError):
        main(["-v", "info", str(out)])
    monkeypatch.setenv("SAELENS_LITE_DEBUG", "1")
    with pytest.raises(CacheCorruptError):
        main(["info", str(out)])
    monkeypatch.setenv("SAELENS_LITE_DEBUG", "0")
    assert main(["info", str(out)]) == 2


def test_help_says_how_to_get_a_traceback(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "SAELENS_LITE_DEBUG=1 shows the full traceback" in out and "exit status 2" in out
