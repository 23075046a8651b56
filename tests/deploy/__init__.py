"""Deployment checks: compose, Dockerfiles, monitoring, host scripts, the latency summary."""
