"""Post-processing MONAI lacks: the 3D clean-up of a 2D network's slice-wise predictions.

MONAI's ``KeepLargestConnectedComponent`` and ``RemoveSmallObjects`` judge a component by its
size alone; a false positive of a slice-wise network is better told apart by how many slices
it spans. Used by the LGG scores (:mod:`tumorseg.metrics.lgg`) and folder inference
(:mod:`tumorseg.inference.lgg`), so it sits below both.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["remove_isolated_false_positives"]


def remove_isolated_false_positives(
    volume: np.ndarray, *, min_slices: int = 2, min_voxels: int = 0, max_components: int = 0
) -> np.ndarray:
    """Drop 3D connected components that span fewer than ``min_slices`` slices or hold
    fewer than ``min_voxels`` voxels, then keep at most the ``max_components`` largest.

    A real lesion continues over neighbouring slices; a 2D network's false positive on a
    tumour-free slice usually does not, so it is a component confined to one slice. Components
    use 26-connectivity, so a lesion that shifts diagonally between slices stays one.

    Args:
        volume: ``(slices, H, W)`` binary prediction of one patient.
        min_slices: keep components spanning at least this many slices (1 keeps all).
        min_voxels: keep components of at least this many voxels.
        max_components: > 0 keeps only this many of the remaining components, the largest
            (most voxels) first; 0 keeps them all. Lower-grade gliomas are mostly one lesion,
            so 1 removes a 2D network's remaining false positives elsewhere in the brain, and
            also a second true lesion: a choice to make on validation data.

    Returns:
        A boolean volume of the same shape.
    """
    mask = np.asarray(volume, bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a (slices, H, W) volume, got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return mask
    if max_components < 0:
        raise ValueError(f"max_components must be >= 0, got {max_components}")
    keep = np.zeros(count + 1, bool)
    sizes = np.zeros(count + 1, np.int64)
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        span = box[0].stop - box[0].start
        sizes[number] = int(np.count_nonzero(labels[box] == number))
        keep[number] = span >= min_slices and sizes[number] >= min_voxels
    if max_components and np.count_nonzero(keep) > max_components:
        # Ties go to the lower label (the first met in scan order), so the result is stable.
        ranked = sorted(np.flatnonzero(keep), key=lambda n: (-sizes[n], n))
        keep[ranked[max_components:]] = False
    return keep[labels]
