"""tokenlm: all audio as discrete tokens, and one language model for many audio tasks.

The package is one import tree: ``tokenlm`` (LM core, kernels, checkpoints, CLI) with
``tokenlm.codecs`` (audio I/O, codec, semantic tokenizer), ``tokenlm.tasks`` and ``tokenlm.apps``
mapped to the repository's ``codecs/``, ``tasks/`` and ``apps/`` folders (see pyproject.toml).
"""

__version__ = "0.1.0"
