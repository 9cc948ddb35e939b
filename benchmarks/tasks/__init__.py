"""Real tasks the demo and the benchmarks train on, and the one training loop they all share.

- ``digits``: scikit-learn's bundled 8x8 digits (fixed split), an MLP and a small CNN.
- ``charlm``: a character-level corpus built from the Python standard library's own sources (a
  fixed file list, SHA-256 recorded), and a small decoder-only transformer.
- ``train``: the jitted train step, evaluation, data order and logging used by everything.

No data is downloaded: both corpora ship with packages that are installed on every machine.
"""
