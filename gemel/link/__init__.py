"""Linking: one example per mention, the ranker over examples, the fusion of LLM and candidate prior,
the decode stage's split, and the Linker that links new inputs with a run (the run's record too)."""
