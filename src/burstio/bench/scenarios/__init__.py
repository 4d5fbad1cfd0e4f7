"""The benchmark scenarios: one module per family, each a function
``(Options, Progress) -> ScenarioResult`` registered in ``burstio.bench.SCENARIOS``."""
