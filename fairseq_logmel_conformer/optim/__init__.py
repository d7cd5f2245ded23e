from . import logmel_adamw, logmel_tri_stage  # noqa: F401  (registration side effects)
