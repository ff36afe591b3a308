"""Benchmarks, one module each: ``kernels`` (``tokenlm bench rvq`` / ``attention``, with ``kernels_gpu``),
``lm`` (``tokenlm bench lm``) and ``codec`` (``tokenlm bench codec``); ``measure`` and ``worker`` are the
timing and fresh-process plumbing they share."""
