"""The model runner: one scheduled batch -> flat step inputs -> the model -> logits."""
