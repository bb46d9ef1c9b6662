"""`provisioner` console script: the invoke tasks (cluster.*, lab.*, bundle.*) of an installed
package, from any folder. `provisioner cluster.up -i my.yml` is `invoke cluster.up -i my.yml`
run inside a checkout."""

from __future__ import annotations

from invoke import Collection, Program

from . import __version__
from .tasks import bundle, cluster, lab


def main() -> None:
    Program(namespace=Collection(cluster, lab, bundle), name="provisioner",
            version=__version__).run()
