"""Data: manifests (lhotse), the embedded corpus, features, augmentation, samplers, tokenizer."""
