"""Build engines: each wraps one external tool (ONNX Runtime GenAI builder, llama.cpp...).

An engine is a class registered under the `edgeqwen.engines` entry point group; see
`edgeqwen.engines.base.Engine` for the contract.
"""
