"""Data: folders -> arrays, grain pipelines, augmentations, the embedded offline dataset."""
