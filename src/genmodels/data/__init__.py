"""Training data: a built-in target by name, sklearn's bundled digits, or the user's file
(vectors, or images: a folder of PNGs, an image array, an IDX file; ``genmodels.data.images``).

Every source becomes a :class:`Dataset`. Batches are drawn by :meth:`Dataset.batch`,
which is a pure function of the step number and the seed (fresh target samples come from
the run's data generator, whose state the checkpoints keep), so a resumed run sees exactly
the batches an uninterrupted run would have seen.
"""

from genmodels.data.dataset import DataError, Dataset, load_data, load_file
from genmodels.data.images import as_images, flatten_images, load_idx, load_png_folder, read_idx

__all__ = [
    "DataError",
    "Dataset",
    "as_images",
    "flatten_images",
    "load_data",
    "load_file",
    "load_idx",
    "load_png_folder",
    "read_idx",
]
