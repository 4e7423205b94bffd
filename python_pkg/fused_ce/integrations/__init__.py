"""Integrations of fused_ce into other libraries; each submodule imports its library only when it is imported."""
