"""Custom ops of StyleGAN2: plain-torch reference code (differentiable twice), each behind one function
that can hand the work to a compiled kernel (see dispatch.py).

Modules: bias_act, upfirdn2d, conv2d_resample, grid_sample, fma. Import the functions from them
(`from engine.ops.bias_act import bias_act`); the package itself re-exports nothing, so that
`engine.ops.bias_act` always names the module.
"""
