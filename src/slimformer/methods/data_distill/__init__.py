"""Data distillation (ERNIE-Tiny style): teacher soft labels on unlabeled text, selection of the
informative examples, easy-to-hard curricula, several teachers combined."""
