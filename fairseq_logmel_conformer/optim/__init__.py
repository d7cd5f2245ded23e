from . import logmel_adamw  # noqa: F401  (registration side effect)
