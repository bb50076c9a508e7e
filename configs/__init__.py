"""Recipes: `configs/<model>/<recipe>.yaml` in LightningCLI format, read with importlib.resources."""
