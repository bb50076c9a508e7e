"""Built-in model families, each registered in setup.cfg under `zoo.models`."""
