"""A plug-in module whose import fails, with a message of two lines."""

raise RuntimeError("this plug-in needs the\nfrobnicator package")
