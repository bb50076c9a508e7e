"""Writers for generated samples: PNG grids and files (images), text."""
