"""MLflow settings shared by every bundle: where runs go and what they are called."""

from tumorseg.tracking.settings import artifact_location, run_name, tracking_uri

__all__ = ["artifact_location", "run_name", "tracking_uri"]
