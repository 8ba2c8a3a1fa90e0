"""Adience folds and the data path into the nets.

* ``transforms``: Caffe's exact image preprocessing (imread, convert_imageset's resize, the Data layer's
  center crop minus mean, ten-crop over-sampling);
* ``mean``: the mean image Caffe subtracts;
* ``lists``: ``convert_imageset`` list files;
* ``adience``: the Adience folds, their metadata, label maps and leakage check;
* ``lmdb_io``: Caffe Datum LMDBs;
* ``remap``: the data paths of published train_val nets pointed at local files;
* ``datasets``: torch datasets over LMDBs, list files and device-resident folds.
"""

from .adience import (
    AdienceFolds,
    DisjointReport,
    FaceRecord,
    LabelMap,
    check_disjoint,
    read_fold_metadata,
    read_label_map,
)
from .lists import ImageList, ListEntry, MissingImagesReport, read_image_list
from .lmdb_io import DatumLMDB, DatumRecord, compute_image_mean, write_datum_lmdb
from .mean import MeanImage
from .datasets import (
    GPUResidentDataset,
    ImageListDataset,
    LMDBDataset,
    ResidentBatch,
    TransformCollate,
    collate,
)
from .remap import PathChange, RemapReport, RemapResult, remap_data_paths, remap_path
from .transforms import (
    CaffeTransform,
    CropParams,
    center_crop_minus_mean,
    hwc_to_chw,
    load_image_bgr,
    oversample_minus_mean,
    oversample_offsets,
    resize_like_convert_imageset,
)

__all__ = [
    "CaffeTransform", "CropParams", "GPUResidentDataset", "ImageListDataset", "LMDBDataset", "PathChange",
    "RemapReport", "RemapResult", "ResidentBatch", "TransformCollate", "collate", "remap_data_paths", "remap_path",
    "AdienceFolds", "DatumLMDB", "DatumRecord", "DisjointReport", "FaceRecord", "ImageList", "LabelMap", "ListEntry",
    "MeanImage", "MissingImagesReport", "center_crop_minus_mean", "check_disjoint", "compute_image_mean",
    "hwc_to_chw", "load_image_bgr", "oversample_minus_mean", "oversample_offsets", "read_fold_metadata",
    "read_image_list", "read_label_map", "resize_like_convert_imageset", "write_datum_lmdb",
]
