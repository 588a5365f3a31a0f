"""Compile every Triton kernel of hdkd.kernels for Hopper (sm_90) on a machine without a GPU:
Triton's own ptxas builds the cubin, so front-end or back-end errors that the interpreter cannot
see (types, layouts, tl.dot shapes) show up here, and the SASS says whether the GEMMs use wgmma
(HGMMA), whether anything spills to local memory (LDL/STL), and how wide the global loads and
stores are (bits per access per thread: 128 is a vectorised access, 16 a single bf16).

Kernels are specialised as the JIT specialises them for a call at the GPU target shape (see
TARGET_ARGS), so the widths are those the GPU runs get.

    python tests/triton_compile_check.py [--all-configs] [--only NAME]

prints one JSON line per compiled (kernel, variant, config). TRITON_INTERPRET must be unset.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HOPPER = GPUTarget("cuda", 90, 32)
ACT = "*bf16"  # the activation type the GPU runs use; float32 is one extra GEMM variant

# Integer arguments at the GPU target of docs/performance.md (bf16, channels_last, batch 64, the
# 96->96@56 block: 384 hidden channels of 56 x 56). At a call the JIT marks pointers (torch
# allocations are 16-byte aligned) and integers divisible by 16 with tt.divisibility = 16 and
# turns integers equal to 1 into constants; _specialise does the same. Integers not named here
# stay unspecialised.
HIDDEN, CIN, SIDE, BATCH = 384, 96, 56, 64
TARGET_ARGS = dict(C=HIDDEN, N=HIDDEN, K=CIN, CX=CIN, B=BATCH, H=SIDE, W=SIDE, Ho=SIDE, Wo=SIDE,
                   Hx=SIDE, Wx=SIDE, HW=SIDE * SIDE, HWo=SIDE * SIDE)
# Every stride argument, stride_<tensor>_<b|c|y|x> (hdkd.kernels._config.strides), as a
# channels_last tensor's.
CHANNELS_LAST_STRIDES = dict(b=HIDDEN * SIDE * SIDE, c=1, y=SIDE * HIDDEN, x=HIDDEN)


def cases():
    """(kernel, pointer types by argument name, constexprs) for each variant worth compiling."""
    from hdkd.kernels import channel_spatial_attention_project as project_kernels
    from hdkd.kernels import channel_spatial_attention as csa
    from hdkd.kernels import dwconv_bn_gelu as dw
    from hdkd.kernels import pointwise_conv as pw

    dwk = dict(STRIDE=1, K=3, BLOCK_P=dw.TILE_P, BLOCK_C=dw.TILE_C)
    out = [
        (csa._channel_stats_kernel, {"h_ptr": ACT}, {}),
        (csa._channel_gate_kernel, {"w1_ptr": ACT, "w2_ptr": ACT}, dict(BLOCK_C=64, BLOCK_R=16)),
        (csa._pixel_pool_kernel, {"h_ptr": ACT}, {}),
        (csa._spatial_gate_kernel, {"w_ptr": ACT}, dict(K=7)),
        (csa._apply_kernel, {"h_ptr": ACT, "out_ptr": ACT}, {}),
        (csa._spatial_logit_grad_kernel, {"g_ptr": ACT, "h_ptr": ACT}, {}),
        (csa._spatial_conv_grad_kernel, {"w_ptr": ACT}, dict(K=7, BLOCK_P=csa._CONV_GRAD_BLOCK_P)),
        (csa._channel_gate_grad_kernel, {"g_ptr": ACT, "h_ptr": ACT}, {}),
        (csa._input_grad_kernel, {"g_ptr": ACT, "h_ptr": ACT, "dh_ptr": ACT}, dict(STATS_GRAD=True)),
        (csa._input_grad_kernel, {"g_ptr": ACT, "h_ptr": ACT, "dh_ptr": ACT}, dict(STATS_GRAD=False)),
        (dw._batch_stats_kernel, {"x_ptr": ACT, "w_ptr": ACT}, dwk),
        (dw._output_kernel, {"x_ptr": ACT, "w_ptr": ACT, "y_ptr": ACT},
         dict(dwk, TILES=dw.OUT_TILES)),
        (dw._grad_reduce_kernel, {"x_ptr": ACT, "w_ptr": ACT, "y_ptr": ACT, "gy_ptr": ACT}, dwk),
        (dw._grad_conv_output_kernel, {"x_ptr": ACT, "w_ptr": ACT, "y_ptr": ACT, "gy_ptr": ACT,
                                       "dv_ptr": ACT},
         dict(dwk, TRAINING=True, BLOCK_P=dw.DW_TILE_P, TILES=dw.DW_TILES, TAPS=16)),
        (dw._grad_input_kernel, {"dv_ptr": ACT, "w_ptr": ACT, "dx_ptr": ACT}, dict(dwk, STRIDE=2)),
        (project_kernels._gated_weight_grad_kernel, {"g_ptr": ACT, "d_ptr": ACT},
         dict(DOT_DTYPE=tl.bfloat16)),
    ]
    gemm = {n: ACT for n in ("a_ptr", "w_ptr", "out_ptr", "x_ptr", "scw_ptr")}
    for epilogue, residual, gated, stride in ((pw.EPI_GELU, pw.RES_NONE, False, 2),
                                              (pw.EPI_NONE, pw.RES_IDENTITY, True, 1),
                                              (pw.EPI_NONE, pw.RES_POOL_GEMM, True, 1),
                                              (pw.EPI_GELU_GRAD, pw.RES_NONE, False, 1)):
        out.append((pw._pointwise_kernel, gemm,
                    dict(IN_STRIDE=stride, GATED=gated, EPILOGUE=epilogue, RESIDUAL=residual,
                         DOT_DTYPE=tl.bfloat16)))
    out.append((pw._pointwise_kernel, {n: "*fp32" for n in gemm},
                dict(IN_STRIDE=1, GATED=False, EPILOGUE=pw.EPI_GELU, RESIDUAL=pw.RES_NONE,
                     DOT_DTYPE=tl.float32)))
    return out


def _specialise(fn, ptrs, constexprs):
    """(signature, constexprs, attrs) as the JIT would build them for a call at TARGET_ARGS."""
    sig, consts, attrs = {}, dict(constexprs), {}
    aligned = [["tt.divisibility", 16]]
    for i, name in enumerate(fn.arg_names):
        if name.startswith("stride_"):
            value = CHANNELS_LAST_STRIDES[name.rsplit("_", 1)[1]]
        else:
            value = TARGET_ARGS.get(name)
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = ptrs.get(name, "*fp32")
            attrs[(i,)] = aligned
        elif name.startswith("inv"):
            sig[name] = "fp32"
        elif value == 1:
            sig[name], consts[name] = "constexpr", 1
        else:
            sig[name] = "i32"
            if value is not None and value % 16 == 0:
                attrs[(i,)] = aligned
    return sig, consts, attrs


def _access_widths(sass: str, prefixes) -> dict:
    """{bits: count} of the global accesses whose opcode starts with one of prefixes."""
    widths = {}
    for op in re.findall(r"\b((?:%s)[\w.]*)" % "|".join(prefixes), sass):
        bits = re.search(r"\.(128|64|U16|S16|U8|S8)\b", op)
        key = {"U16": "16", "S16": "16", "U8": "8", "S8": "8"}.get(bits.group(1), bits.group(1)) \
            if bits else "32"
        widths[key] = widths.get(key, 0) + 1
    return widths


def _sass(cubin: bytes) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout


def run(all_configs: bool, only: str = ""):
    for kernel, ptrs, constexprs in cases():
        if only and only not in getattr(kernel, "fn", kernel).__name__:
            continue
        tuned = isinstance(kernel, triton.runtime.autotuner.Autotuner)
        fn = kernel.fn if tuned else kernel
        configs = kernel.configs if tuned else [triton.Config({}, num_warps=4, num_stages=1)]
        configs = configs if all_configs else configs[:1]
        for config in configs:
            consts = {**constexprs, **config.kwargs}
            row = dict(kernel=fn.__name__, variant={k: str(v) for k, v in constexprs.items()},
                       config=config.kwargs, num_warps=config.num_warps,
                       num_stages=config.num_stages)
            try:
                compiled = triton.compile(ASTSource(fn, *_specialise(fn, ptrs, consts)),
                                          target=HOPPER,
                                          options=dict(num_warps=config.num_warps,
                                                       num_stages=config.num_stages))
                sass = _sass(compiled.asm["cubin"])
                row.update(ok=True, hgmma=sass.count("HGMMA"), ldl=sass.count("LDL"),
                           stl=sass.count("STL"), loads=_access_widths(sass, ("LDG", "LDGSTS")),
                           stores=_access_widths(sass, ("STG",)))
            except Exception as e:  # reported, not raised: one broken kernel must not hide others
                row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:2000]}")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("unset TRITON_INTERPRET: the interpreter does not compile kernels")
    args = sys.argv[1:]
    run(all_configs="--all-configs" in args,
        only=args[args.index("--only") + 1] if "--only" in args else "")
