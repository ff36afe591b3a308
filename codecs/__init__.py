"""Audio in and out of tokens: audio I/O, the RVQ codec, the semantic tokenizer (``tokenlm.codecs``)."""
