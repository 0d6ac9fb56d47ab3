"""Hearth: one self-hosted gateway for every LLM server in the house."""

__version__ = "0.1.0"
