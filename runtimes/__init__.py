"""Inference backends behind one interface (`runtimes.base.Runtime`).

Backends register under the `edgeqwen.runtimes` entry point group and are imported only
when used: `edgeqwen.registry.runtimes.get("transformers")`.
"""
