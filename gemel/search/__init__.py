"""What each mention is compared against: its demonstrations from the training split (the retrieve
stage) and its candidate entities from the KB (the candidates stage: name, trigram and dense
sources, the ranker and its listwise fit)."""
