"""`realnvp`: RealNVP (Dinh, Sohl-Dickstein & Bengio 2017), affine couplings in a multi-scale architecture.

Each level: affine couplings over a checkerboard of pixels, a squeeze, affine couplings over alternating
halves of the channels, and half of the channels factored out under a learned Gaussian conditioned on the
rest; the last level has checkerboard couplings only. The scale is sigmoid(s + 2) rather than the paper's
exp(tanh(s)) scaled, and ActNorm takes the place of the paper's batch normalisation (no batch statistics,
so training and evaluation compute the same function). Training, sampling with a temperature, bits per
dimension, editing and interpolation: `zoo.flow_family`.

    python -m zoo.fit --model realnvp                                                  # on digits
    python -m zoo.sample --ckpt runs/realnvp/<run>/checkpoints/last.ckpt --temperature 0.7
"""

from zoo.flow_family import flow_family

RealNVP = flow_family(
    "RealNVP", __name__, __doc__, layout="realnvp", levels=2, steps_per_level=3, coupling="affine",
    permutation="none", actnorm=True,
)  # fmt: skip
