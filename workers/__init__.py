"""plandiff.workers: the worker that serves generation phases over a loaded model, in-process or
as a Ray actor (actor.py, imported only where Ray is used)."""

from .worker import Worker

__all__ = ["Worker"]
