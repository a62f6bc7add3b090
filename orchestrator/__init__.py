"""plandiff.orchestrator: control plane and entry points (CLI)."""
