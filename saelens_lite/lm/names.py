"""The model aliases' names, without importing transformers: the CLI's ``--model`` help reads
them while it builds its parser. :data:`saelens_lite.lm.load.ALIASES` holds the loaders under
the same names, in the same order (a test checks)."""

ALIAS_NAMES: tuple[str, ...] = ("smollm2-135m", "minilm", "tiny-llama", "tiny-gpt2", "tiny-bert")
