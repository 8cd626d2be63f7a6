"""The ``pplink`` command line: the composition root, the only place that imports both sides."""
