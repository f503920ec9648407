"""LoRA Studio backend: data, models, training jobs, recipes. Never imports gradio."""

from studio.errors import StudioError

__version__ = "0.1.0"
__all__ = ["StudioError", "__version__"]
