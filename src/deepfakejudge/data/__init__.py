"""Datasets: canonical JSONL and the official ms-swift JSONL, read into the same records."""

from .canonical import InputError, relative_image, sample_from_dict, sample_to_dict
from .images import MAX_IMAGE_PIXELS, LoadedImage, open_image
from .reader import Dataset, load_records, resolve_data_path
from .stats import DatasetStats, dataset_stats

__all__ = [
    "MAX_IMAGE_PIXELS",
    "Dataset",
    "DatasetStats",
    "InputError",
    "LoadedImage",
    "dataset_stats",
    "load_records",
    "open_image",
    "relative_image",
    "resolve_data_path",
    "sample_from_dict",
    "sample_to_dict",
]
