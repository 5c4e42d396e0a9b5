"""Datasets: canonical JSONL and the official ms-swift JSONL, read into the same records."""

from .canonical import InputError, sample_from_dict, sample_to_dict
from .images import MAX_IMAGE_PIXELS, LoadedImage, open_image
from .reader import Dataset, load_records, resolve_data_path

__all__ = [
    "MAX_IMAGE_PIXELS",
    "Dataset",
    "InputError",
    "LoadedImage",
    "load_records",
    "open_image",
    "resolve_data_path",
    "sample_from_dict",
    "sample_to_dict",
]
