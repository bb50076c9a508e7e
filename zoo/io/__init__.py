"""Writers for generated samples: PNG grids and files (images), WAV (audio), GIF/MP4 and frame grids (video), text."""
