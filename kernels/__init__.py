"""fastlt.kernels: Triton kernels, each beside a torch reference with identical semantics and a dispatcher."""
