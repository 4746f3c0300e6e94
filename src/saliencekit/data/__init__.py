"""Data: the synthetic chest X-ray generator, folder datasets, preprocessing and splits."""

from saliencekit.data.augment import Augmentation
from saliencekit.data.folder import FolderIndex, ImageFolderDataset, Sample, check_images, scan_folder
from saliencekit.data.preprocess import Preprocessing, load_mask
from saliencekit.data.reader import open_image, read_image
from saliencekit.data.split import Split, load_split, save_split, stratified_split
from saliencekit.data.synthetic import SynthSummary, generate

__all__ = [
    "Augmentation", "FolderIndex", "ImageFolderDataset", "Preprocessing", "Sample", "Split", "SynthSummary",
    "check_images", "generate", "load_mask", "load_split", "open_image", "read_image", "save_split", "scan_folder",
    "stratified_split",
]
