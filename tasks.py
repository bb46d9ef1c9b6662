"""`invoke --list` shows every task. Each namespace is a module in provisioner/tasks/."""

from invoke import Collection

from provisioner.tasks import bundle, cluster, lab

ns = Collection(cluster, lab, bundle)
