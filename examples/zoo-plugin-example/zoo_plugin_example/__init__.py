"""An example zoo plugin: `gaussian_pixels` (model) and `stripes` (datamodule)."""
