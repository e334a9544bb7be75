"""Deterministic synthetic BraTS-like studies: four MRI contrasts and a tumour label map.

The phantoms stand in for real studies wherever those are unavailable (tests, the demo, CI,
benchmarks at the real 240x240x155 size). Each one is a skull-stripped brain:

* a deformed ellipsoid with real-brain proportions (left-right : antero-posterior :
  infero-superior = 0.82 : 1 : 0.76), a convoluted grey/white-matter boundary, sulcal CSF,
  an interhemispheric fissure, deep grey nuclei and two lateral ventricles;
* one or more gliomas, each a blobby necrotic core (``NCR``) inside an enhancing rim (``ET``,
  at least two voxels thick) inside a shell of edema (``ED``) that spreads further along the
  white matter;
* tissue contrasts per sequence (:data:`DEFAULT_CONTRAST`): edema bright on FLAIR and T2,
  the rim bright on T1ce, necrosis dark on T1ce and bright on T2, tumour darker than white
  matter on T1, CSF dark on FLAIR and bright on T2;
* a fine tissue texture, a partial-volume blur, a smooth multiplicative bias field per
  sequence, a per-case scanner gain and Rician noise; background is exactly 0 and every brain
  voxel is at least 1, so MONAI's ``CropForeground`` and non-zero normalisation see exactly
  the brain.

All random structure comes from smooth noise defined on a lattice whose spacing is a fixed
fraction of the brain size, evaluated with separable Gaussian weights (three small matrix
products, no per-voxel Python loops), so a 64^3 case takes under 0.1 s of CPU and a
240x240x155 case about two seconds. Everything is drawn from one
:class:`numpy.random.Generator`, so a seed fixes a case bit for bit on a given platform (the
geometry is computed in float64, so last-bit differences between CPUs' vectorised maths are
very unlikely to move a label boundary elsewhere); case ``i`` of a dataset uses a seed derived
from ``(seed, i)``, so it does not depend on how many cases are generated.

Label values come from :func:`tumorseg.conventions.get_convention`; the file names from
:data:`tumorseg.conventions.LAYOUTS`.

The package is split by concern: :mod:`~tumorseg.data.synthetic.anatomy` (brain and tumour
geometry), :mod:`~tumorseg.data.synthetic.phantom` (one study in memory) and
:mod:`~tumorseg.data.synthetic.files` (NIfTI files and datasets on disk).
"""

from tumorseg.data.synthetic.anatomy import TISSUES
from tumorseg.data.synthetic.files import generate_dataset, orientation_affine, write_case
from tumorseg.data.synthetic.phantom import DEFAULT_CONTRAST, make_phantom

__all__ = [
    "DEFAULT_CONTRAST",
    "TISSUES",
    "generate_dataset",
    "make_phantom",
    "orientation_affine",
    "write_case",
]
