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
    volume: np.ndarray, *, min_slices: int = 2, min_voxels: int = 0
) -> np.ndarray:
    """Drop 3D connected components that span fewer than ``min_slices`` slices or hold
    fewer than ``min_voxels`` voxels.

    A real lesion continues over neighbouring slices; a 2D network's false positive on a
    tumour-free slice usually does not, so it is a component confined to one slice. Components
    use 26-connectivity, so a lesion that shifts diagonally between slices stays one.

    Args:
        volume: ``(slices, H, W)`` binary prediction of one patient.
        min_slices: keep components spanning at least this many slices (1 keeps all).
        min_voxels: keep components of at least this many voxels.

    Returns:
        A boolean volume of the same shape.
    """
    mask = np.asarray(volume, bool)
    if mask.ndim != 3:
        raise ValueError(f"expected a (slices, H, W) volume, got shape {mask.shape}")
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return mask
    keep = np.zeros(count + 1, bool)
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        span = box[0].stop - box[0].start
        size = int(np.count_nonzero(labels[box] == number))
        keep[number] = span >= min_slices and size >= min_voxels
    return keep[labels]
