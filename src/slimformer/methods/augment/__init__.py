"""Data augmentation for KD (TinyBERT DA, Tang et al. 2019): new sentences near the training
ones, for the teacher to label. Word replacement (masked LM or embedding neighbours), masking,
deletion and n-gram sampling; N seeded copies per example."""
