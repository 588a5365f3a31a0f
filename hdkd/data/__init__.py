"""Dataset readers and transforms (image folders, MedMNIST .npz, the embedded digits demo data)."""
from .augment import TrainAugment
from .datasets import ArrayImageDataset, ImageFileDataset
from .folders import ImageReadError, read_image
from .loading import load_dataset
from .sampling import class_balanced_sampler, smote_oversample
from .smote_targets import read_smote_targets
from .splits import DatasetSplits, stratified_split
from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ArrayImageDataset", "DatasetSplits", "IMAGENET_MEAN", "IMAGENET_STD",
           "ImageFileDataset", "ImageReadError", "TrainAugment", "class_balanced_sampler",
           "load_dataset", "read_image", "read_smote_targets", "smote_oversample",
           "stratified_split"]
