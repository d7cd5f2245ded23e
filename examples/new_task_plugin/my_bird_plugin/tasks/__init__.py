from .bird_calls import BirdCallsConfig, BirdCallsTask  # noqa: F401
