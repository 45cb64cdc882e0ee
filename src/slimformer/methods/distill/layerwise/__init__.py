"""Layer-wise (TinyBERT-style) distillation: which student layer learns from which teacher
layer, what is recorded inside both models, and the intermediate loss built from them."""
