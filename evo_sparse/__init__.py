"""evo-sparse: Random Search (Weedout) and GA over node masks of a Wide ResNet, scored on CIFAR-10."""

__version__ = "0.1.0"
