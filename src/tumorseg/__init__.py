"""tumorseg: brain-tumour segmentation in MRI on MONAI bundles."""

__version__ = "0.1.0"

__all__ = ["__version__"]
