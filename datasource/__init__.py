"""Data sets as on-device tensors (named so as not to shadow the `datasets` package)."""
from datasource.device_loader import DeviceLoader, random_crop
from datasource.checks import DataError
from datasource.sources import DATASETS, ImageData, load_dataset

__all__ = ["DataError", "DATASETS", "ImageData", "load_dataset", "DeviceLoader", "random_crop"]
