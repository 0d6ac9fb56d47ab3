"""The backend simulator: a model of Ollama's scheduler, a workload, and two ways to run it.

``specs`` describes servers, models and requests; ``ollama`` is Ollama's scheduler as a state
machine driven by an outside clock; ``des`` runs it in simulated time (``hearth sim``);
``emulator`` serves it over real HTTP in compressed time (``hearth sim --live``).
"""
