"""`glow`: Glow (Kingma & Dhariwal 2018), ActNorm, invertible 1x1 convolutions and affine couplings.

Each level: a squeeze, then steps of [ActNorm, LU-decomposed invertible 1x1 convolution, affine coupling
over half of the channels], and half of the channels factored out under a learned Gaussian conditioned on
the rest; the top prior is learned too, and class-conditional with `--model.class_conditional true` (the
paper's class-conditional setting). Training, sampling with a temperature, bits per dimension, latent
attribute editing and interpolation: `zoo.flow_family`.

    python -m zoo.fit --model glow                                                     # on digits
    python -m zoo.sample --ckpt runs/glow/<run>/checkpoints/last.ckpt --temperature 0.7
    python -m zoo.sample --ckpt runs/glow/<run>/checkpoints/last.ckpt --init-image x.png --edit-from 3 --edit-to 8
"""

from zoo.flow_family import flow_family

Glow = flow_family(
    "Glow", __name__, __doc__, layout="glow", levels=3, steps_per_level=8, coupling="affine",
    permutation="conv1x1", actnorm=True,
)  # fmt: skip
