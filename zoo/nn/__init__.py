"""Layers shared by several families: the diffusion U-Net, embeddings, attention."""
