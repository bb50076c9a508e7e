"""`nice`: NICE (Dinh, Krueger & Bengio 2015), additive coupling layers and a diagonal scaling.

Volume-preserving additive couplings (z_b = x_b + t(x_a), log-determinant 0) alternate over a checkerboard of
pixels at full resolution; the learned diagonal Gaussian of the top prior is NICE's final scaling layer
(its log-scales are the only non-zero log-determinant). The paper's coupling functions are MLPs on the
flattened image; here they are the small convolutional networks of the other flows. Training, sampling with a
temperature, bits per dimension, editing and interpolation: `zoo.flow_family`.

    python -m zoo.fit --model nice                                                     # on digits
    python -m zoo.sample --ckpt runs/nice/<run>/checkpoints/last.ckpt --temperature 0.7
"""

from zoo.flow_family import flow_family

NICE = flow_family(
    "NICE", __name__, __doc__, layout="realnvp", levels=1, steps_per_level=3, coupling="additive",
    permutation="none", actnorm=False,
)  # fmt: skip
