"""Manifest folders for the six fine-tuning datasets, built from their official releases (``logmel-prepare``)."""
