"""zoo: a model zoo of generative models on PyTorch Lightning.

The public face is the registry: `list_models()`, `create_model(name, **kwargs)`,
`list_datamodules()`, `create_datamodule(name, **kwargs)`. Importing `zoo` imports neither torch
nor any plugin; a family's class is imported when it is first used.
"""

from zoo.registry import (
    create_datamodule,
    create_model,
    get_datamodule_class,
    get_model_class,
    list_datamodules,
    list_models,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "create_datamodule",
    "create_model",
    "get_datamodule_class",
    "get_model_class",
    "list_datamodules",
    "list_models",
]
