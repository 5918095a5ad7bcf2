"""The plug-in ``toy_plugins:Namespace.Batches`` again, under a name whose folder slug is the same:
``toy_plugins_Namespace:Batches``."""

from toy_plugins import Batches

__all__ = ["Batches"]
