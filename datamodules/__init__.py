"""Built-in datamodules, each registered in setup.cfg under `zoo.datamodules`."""
