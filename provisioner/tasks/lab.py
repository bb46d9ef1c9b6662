"""`invoke lab.*` tasks."""

from invoke import task
