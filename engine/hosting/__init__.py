"""Where the engine is hosted: the ZeroGPU duration model (``zerogpu``) and, later, other platforms' limits."""
