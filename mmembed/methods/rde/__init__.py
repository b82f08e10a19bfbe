"""RDE: Robust Dual Embedding for text-to-image person re-identification under noisy correspondence.

Submodules are imported explicitly (``mmembed.methods.rde.noise``,
``mmembed.methods.rde.objective``); this package imports nothing itself.

References:
    Qin et al., "Noisy-Correspondence Learning for Text-to-Image Person
    Re-identification", CVPR 2024, https://arxiv.org/abs/2308.09911.
"""
