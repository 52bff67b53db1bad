"""The --quantization modes, in a module without torch so the CLI can name them before anything heavy loads."""

QUANTIZATION_MODES = ("none", "int8", "fp16")  # CPU linear weights (engine.model.quant)
