"""EvalConfig (issue 24): `evaluate` takes one validated config; errors name the field, the bad
value and what is allowed, and the eval command's flags map onto it."""

from __future__ import annotations

import dataclasses

import pytest

from saelens_lite.cli import build_parser
from saelens_lite.cli.eval import eval_config
from saelens_lite.evals import EvalConfig
from saelens_lite.util.dataclass_args import field_docs


@pytest.mark.parametrize("field, value, allowed", [
    ("batch_size", 0, "an integer >= 1"),
    ("ce_contexts", 1.5, "an integer >= 1"),
    ("heldout_tokens", -1, "an integer >= 0"),
    ("context_size", 0, "an integer >= 1"),
    ("exclude", "eos", r"choose one of \['special', 'bos', 'none'\]"),
    ("dense_threshold", 1.5, r"a fraction in \[0, 1\]"),
    ("dead_threshold", float("nan"), r"a fraction in \[0, 1\]"),
    ("downstream", "yes", "True or False"),
    ("device", "", "cpu, cuda or cuda:N"),
])
def test_a_bad_value_names_the_field_the_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=rf"EvalConfig.{field}={value!r}.*{allowed}"):
        EvalConfig(**{field: value})


def test_every_field_has_a_docstring():
    assert set(field_docs(EvalConfig)) == {f.name for f in dataclasses.fields(EvalConfig)}


def test_the_eval_flags_map_onto_the_config():
    args = build_parser().parse_args(
        ["eval", "--sae", "s", "--activations", "a", "--out", "o", "--n-tokens", "0",
         "--no-in-sample", "--no-downstream", "--exclude", "bos", "--ce-contexts", "3",
         "--dense-threshold", "0.2", "--no-progress"])
    assert eval_config(args) == EvalConfig(n_tokens=None, in_sample=False, downstream=False,
                                           exclude="bos", ce_contexts=3, dense_threshold=0.2,
                                           out_dir="o", progress=False)
    defaults = eval_config(build_parser().parse_args(["eval", "--sae", "s", "--activations", "a",
                                                      "--out", "o"]))
    assert defaults == EvalConfig(out_dir="o")  # the command's defaults are the config's
