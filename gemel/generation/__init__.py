"""The frozen LLM and what it generates with: loading (and the GGUF cache), the prompt, the model with
its image mapper and the mapper's training, the entity-name trie, constrained decoding and candidate
scoring, and reading KB descriptions."""
