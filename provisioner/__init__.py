"""Kubernetes cluster provisioner: inventory -> render -> probe -> plan -> apply, phase by phase."""
