"""plandiff.workers: the worker that serves generation phases over a loaded model, in-process or
as a Ray actor (actor.py, imported only where Ray is used), through one batched engine (engine.py,
scheduler.py) that puts every running request's step into one forward. `Worker` loads torch on
first use."""

__all__ = ["Worker"]


def __getattr__(name: str):
    if name == "Worker":
        from .worker import Worker

        return Worker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
