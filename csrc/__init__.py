"""C++ and CUDA sources of the native backends, installed as package data for the just-in-time build."""
