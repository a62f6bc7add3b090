"""plandiff.workers: worker actors that serve generation phases (see the orchestrator issue)."""
