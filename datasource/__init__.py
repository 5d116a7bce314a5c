"""Data sets as on-device tensors (named so as not to shadow the `datasets` package)."""
from maskednas.datasource.device_loader import DeviceLoader, random_crop
from maskednas.datasource.checks import DataError
from maskednas.datasource.sources import DATASETS, ImageData, load_dataset
from maskednas.datasource.text import TokenData  # registers the text data sets

__all__ = ["DataError", "DATASETS", "ImageData", "TokenData", "load_dataset", "DeviceLoader", "random_crop"]
