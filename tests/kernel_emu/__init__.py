"""CPU emulation of the CUDA execution model for testing the kernel LOGIC of ``engines/csrc/coattn_kernel.cu``.

``build.py`` compiles the unmodified kernel source with g++ against the shims in ``emu_include/``; the tests are in
``tests/test_kernel_emulation.py``.  This is an emulation, never a GPU run.
"""
