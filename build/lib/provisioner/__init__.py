"""Kubernetes cluster provisioner: inventory -> render -> probe -> plan -> apply, phase by phase."""

__version__ = "0.1.0"
