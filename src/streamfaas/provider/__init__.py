"""Where functions run. ``local`` (processes on this machine) is the embedded default."""

from .images import ImageStore, LocalImage, normalise_image
from .local import FunctionRecord, LocalProvider
from .models import FunctionDeployment, FunctionStatus, ScaleServiceRequest

__all__ = [
    "FunctionDeployment",
    "FunctionRecord",
    "FunctionStatus",
    "ImageStore",
    "LocalImage",
    "LocalProvider",
    "ScaleServiceRequest",
    "normalise_image",
]
