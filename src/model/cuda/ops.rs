//! The kernels as candle custom operations.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

const SOURCE: &str = include_str!("kernels.cu");
const MODULE: &str = "greve_kernels";
/// Positions per attention block: a short loop each, and enough blocks to
/// fill the GPU from about 2k positions on.
const CHUNK: usize = 64;
/// Shared memory a block may take without opting in to more.
const MAX_SHARED: usize = 48 * 1024;
const THREADS: u32 = 256;

/// The kernels' PTX, compiled once per process.
pub(super) fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        nvrtc::compile_ptx(SOURCE)
            .map(|ptx| ptx.to_src())
            .map_err(|e| format!("NVRTC cannot compile greve's CUDA kernels: {e}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

/// Kernel `name` for the dtype of `suffix`, loaded on `dev` once.
macro_rules! kernel {
    ($dev:expr, $name:literal, $suffix:expr) => {
        $dev.get_or_load_custom_func(&format!(concat!($name, "_{}"), $suffix), MODULE, ptx()?)
    };
}

/// Evaluates `$body` with `$T` the Rust type of `$dtype` and `$suffix`
/// the kernels' name suffix for it.
macro_rules! by_dtype {
    ($dtype:expr, $T:ident, $suffix:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                let $suffix = "f32";
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                let $suffix = "bf16";
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                let $suffix = "f16";
                $body
            }
            other => bail!("greve's CUDA kernels take f32, bf16 and f16, not {other:?}"),
        }
    };
}

/// Rows of a (…, cols) layout whose last axis is contiguous and whose rows
/// are evenly spaced: (rows, elements from one row's start to the next).
fn rows(l: &Layout) -> Option<(usize, usize)> {
    let (dims, stride) = (l.dims(), l.stride());
    let r = dims.len();
    if r == 0 || stride[r - 1] != 1 && dims[r - 1] > 1 {
        return None;
    }
    if r == 1 {
        return Some((1, dims[0]));
    }
    let even = (0..r - 2).all(|i| dims[i] == 1 || stride[i] == stride[i + 1] * dims[i + 1]);
    even.then(|| (dims[..r - 1].iter().product(), stride[r - 2]))
}

pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<usize>,
) -> Result<Option<Tensor>> {
    let (b, heads, n, hd) = q.dims4()?;
    let (_, kv_heads, t, _) = k.dims4()?;
    let group = heads / kv_heads;
    let shared = group * (hd + 1 + CHUNK) * std::mem::size_of::<f32>();
    if b != 1 || n != 1 || t == 0 || shared > MAX_SHARED {
        return Ok(None);
    }
    let op = DecodeAttention {
        start: t.saturating_sub(window.unwrap_or(t)),
        group,
        scale: 1.0 / (hd as f32).sqrt(),
        shared,
    };
    q.contiguous()?.apply_op3_no_bwd(k, v, &op).map(Some)
}

struct DecodeAttention {
    start: usize,
    group: usize,
    scale: f32,
    shared: usize,
}

impl CustomOp3 for DecodeAttention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("decode attention is a CUDA kernel")
    }

    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        ql: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let y =
            by_dtype!(q.dtype(), T, suffix => self.run::<T>(suffix, (q, ql), (k, kl), (v, vl))?);
        let hd = kl.dims()[3]; // run checked the rank
        Ok((y, Shape::from((1, ql.shape().elem_count() / hd, 1, hd))))
    }
}

impl DecodeAttention {
    fn run<T: CudaDType + DeviceRepr>(
        &self,
        suffix: &str,
        (q, ql): (&CudaStorage, &Layout),
        (k, kl): (&CudaStorage, &Layout),
        (v, vl): (&CudaStorage, &Layout),
    ) -> Result<CudaStorage> {
        let (_, kv_heads, t, hd) = kl.shape().dims4()?;
        let heads = ql.shape().elem_count() / hd;
        let (ks, vs) = (kl.stride(), vl.stride());
        if ks != vs || ks[3] != 1 || !ql.is_contiguous() {
            bail!("decode attention: keys and values laid out apart ({ks:?}, {vs:?})")
        }
        let chunks = (t - self.start).div_ceil(CHUNK);
        let (kv_stride, pos_stride) = (ks[1], ks[2]);
        let dev = q.device();
        let q = q.as_cuda_slice::<T>()?.slice(ql.start_offset()..);
        let k = k.as_cuda_slice::<T>()?.slice(kl.start_offset()..);
        let v = v.as_cuda_slice::<T>()?.slice(vl.start_offset()..);
        // Each chunk's maximum, sum and weighted values, in one allocation
        // (each is a driver call).
        let parts = heads * chunks;
        // SAFETY: phase 1 writes every element before phase 2 reads it,
        // and all of y before it is returned.
        let scratch = unsafe { dev.alloc::<f32>(parts * (2 + hd))? };
        let y = unsafe { dev.alloc::<T>(heads * hd)? };
        let part_max = scratch.slice(..parts);
        let part_sum = scratch.slice(parts..2 * parts);
        let part_acc = scratch.slice(2 * parts..);

        let phase1 = kernel!(dev, "attend_chunks", suffix)?;
        let mut launch = phase1.builder();
        launch.arg(&q).arg(&k).arg(&v);
        launch.arg(&part_max).arg(&part_sum).arg(&part_acc).arg(&y);
        let ints = [hd, self.group, self.start, t, CHUNK].map(|x| x as i32);
        let (kv_stride, pos_stride) = (kv_stride as i64, pos_stride as i64);
        launch
            .arg(&ints[0])
            .arg(&ints[1])
            .arg(&ints[2])
            .arg(&ints[3]);
        launch
            .arg(&kv_stride)
            .arg(&pos_stride)
            .arg(&self.scale)
            .arg(&ints[4]);
        let config = LaunchConfig {
            grid_dim: (kv_heads as u32, chunks as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: self.shared as u32,
        };
        // SAFETY: the arguments match the kernel's signature; every index
        // it forms stays within the views checked by the caller.
        unsafe { launch.launch(config) }.w()?;
        if chunks > 1 {
            let phase2 = kernel!(dev, "merge_chunks", suffix)?;
            let mut launch = phase2.builder();
            let (hd, chunks) = (hd as i32, chunks as i32);
            launch.arg(&part_max).arg(&part_sum).arg(&part_acc).arg(&y);
            launch.arg(&hd).arg(&chunks);
            let config = LaunchConfig {
                grid_dim: (heads as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above.
            unsafe { launch.launch(config) }.w()?;
        }
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    }
}

pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Option<Tensor>> {
    let (g, u) = (rows(gate.layout()), rows(up.layout()));
    if gate.dims() != up.dims() || g.is_none() || g != u {
        return Ok(None);
    }
    gate.apply_op2_no_bwd(up, &SiluMul).map(Some)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "silu-mul"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("silu-mul is a CUDA kernel")
    }

    fn cuda_fwd(
        &self,
        gate: &CudaStorage,
        gl: &Layout,
        up: &CudaStorage,
        ul: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let Some((rows, stride)) = rows(gl) else {
            bail!("silu-mul: uneven rows {gl:?}")
        };
        let f = gl.dims()[gl.dims().len() - 1];
        let dev = gate.device();
        let y = by_dtype!(gate.dtype(), T, suffix => {
            let gate = gate.as_cuda_slice::<T>()?.slice(gl.start_offset()..);
            let up = up.as_cuda_slice::<T>()?.slice(ul.start_offset()..);
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<T>(rows * f)? };
            let func = kernel!(dev, "silu_mul", suffix)?;
            let mut launch = func.builder();
            let (f32_, stride) = (f as i32, stride as i64);
            launch.arg(&gate).arg(&up).arg(&y).arg(&f32_).arg(&stride);
            let config = LaunchConfig {
                grid_dim: (f.div_ceil(THREADS as usize) as u32, rows as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: rows × f elements of y; gate and up rows checked by rows().
            unsafe { launch.launch(config) }.w()?;
            CudaStorage::wrap_cuda_slice(y, dev.clone())
        });
        Ok((y, gl.shape().clone()))
    }
}

pub fn add_rms_norm(
    x: &Tensor,
    y: &Tensor,
    w: &Tensor,
    eps: f32,
) -> Result<Option<(Tensor, Tensor)>> {
    let d = w.elem_count();
    let contiguous = [x, y, w].iter().all(|t| t.is_contiguous());
    if !contiguous || x.dims() != y.dims() || x.dims().last() != Some(&d) || w.dtype() != x.dtype()
    {
        return Ok(None);
    }
    let both = x.apply_op3_no_bwd(y, w, &AddRmsNorm { eps })?;
    Ok(Some((both.get(0)?, both.get(1)?)))
}

struct AddRmsNorm {
    eps: f32,
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("add-rms-norm is a CUDA kernel")
    }

    /// The sum and the norm, stacked: (2, …x's shape).
    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        y: &CudaStorage,
        yl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let d = wl.shape().elem_count();
        let rows = xl.shape().elem_count() / d;
        let dev = x.device();
        let both = by_dtype!(x.dtype(), T, suffix => {
            let x = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
            let y = y.as_cuda_slice::<T>()?.slice(yl.start_offset()..);
            let w = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
            // SAFETY: the kernel writes every element of both halves.
            let both = unsafe { dev.alloc::<T>(2 * rows * d)? };
            let (sum, out) = (both.slice(..rows * d), both.slice(rows * d..));
            let func = kernel!(dev, "add_rms_norm", suffix)?;
            let mut launch = func.builder();
            let d_i32 = d as i32;
            launch.arg(&x).arg(&y).arg(&w).arg(&sum).arg(&out).arg(&d_i32).arg(&self.eps);
            // Whole warps (the block sum's unit), up to 1024 threads.
            let threads = d.div_ceil(32).clamp(1, 32) as u32 * 32;
            let config = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: rows × d elements in each of x, y, sum and out.
            unsafe { launch.launch(config) }.w()?;
            CudaStorage::wrap_cuda_slice(both, dev.clone())
        });
        let mut dims = vec![2];
        dims.extend_from_slice(xl.dims());
        Ok((both, Shape::from(dims)))
    }
}
