"""evo-sparse: Random Search (Weedout) and GA over node masks of a network (a Wide ResNet by default) on CIFAR-10."""

__version__ = "0.1.0"
