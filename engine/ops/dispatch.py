"""Which implementation each op uses: the plain-torch reference or a compiled kernel from extensions/.

Contract used by the op modules (bias_act.py, upfirdn2d.py, ...):
    kernel = compiled("bias_act", x)   # the loaded extension module for x's device, or None -> use the reference
    op_paths()                         # {"bias_act": "reference" | "compiled ..." , ...} for `info` and the dashboard

STUDIO_OPS=ref forces the reference everywhere; STUDIO_OPS=compiled asks for the compiled kernels.
"""

import os

OPS = ("bias_act", "upfirdn2d", "conv2d_resample", "grid_sample")


def mode():
    m = os.environ.get("STUDIO_OPS", "auto").strip().lower() or "auto"
    return m if m in ("auto", "ref", "compiled") else "auto"


def compiled(name, x=None):
    """The compiled kernel module for op `name` and tensor `x`, or None to use the reference code."""
    return None


def op_paths():
    """{op name: human-readable path} for each op."""
    return {name: "reference (plain torch)" for name in OPS}
