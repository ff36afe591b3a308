"""The corpus: audio from Debian packages and synthesis engines, JSONL manifests, loaders for public datasets.

Read clips with ``tokenlm.corpus.manifest.load_clips``; build them with ``tokenlm data build``.
"""

from tokenlm.corpus.manifest import KINDS, PARTS, Clip, data_root, load_clips, read_manifest, write_manifest

__all__ = ["KINDS", "PARTS", "Clip", "data_root", "load_clips", "read_manifest", "write_manifest"]
