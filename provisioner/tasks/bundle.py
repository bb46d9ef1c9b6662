"""`invoke bundle.*` tasks."""

from invoke import task
