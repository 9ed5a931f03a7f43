//! The kernels as candle custom operations.

use std::sync::OnceLock;

use super::{CHUNK, MATVEC_ROWS, THREADS};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, InplaceOp3, Layout, Result, Shape,
    Tensor,
};

const SOURCE: &str = include_str!("kernels.cu");
const MODULE: &str = "greve_kernels";
/// Shared memory a block may take without opting in to more.
const MAX_SHARED: usize = 48 * 1024;
/// The widest row the residual add and norm takes: NORM_PER_THREAD in
/// kernels.cu times 1024 threads.
const NORM_MAX: usize = 8 * 1024;

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

/// An op's name, and its `cpu_fwd` refusing: these ops are CUDA kernels,
/// and their callers take candle's operations on other devices.
macro_rules! cuda_only {
    ($name:literal, ($($arg:ty),*) -> $ret:ty) => {
        fn name(&self) -> &'static str {
            $name
        }

        fn cpu_fwd(&self, $(_: $arg),*) -> Result<$ret> {
            bail!(concat!($name, " is a CUDA kernel"))
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
    cuda_only!(
        "decode-attention",
        (&CpuStorage, &Layout, &CpuStorage, &Layout, &CpuStorage, &Layout) -> (CpuStorage, Shape)
    );

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
    cuda_only!(
        "silu-mul",
        (&CpuStorage, &Layout, &CpuStorage, &Layout) -> (CpuStorage, Shape)
    );

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
    let shapes = x.dims() == y.dims() && x.dims().last() == Some(&d) && d <= NORM_MAX;
    if !contiguous || !shapes || w.dtype() != x.dtype() {
        return Ok(None);
    }
    let both = x.apply_op3_no_bwd(y, w, &AddRmsNorm { eps })?;
    Ok(Some((both.get(0)?, both.get(1)?)))
}

struct AddRmsNorm {
    eps: f32,
}

impl CustomOp3 for AddRmsNorm {
    cuda_only!(
        "add-rms-norm",
        (&CpuStorage, &Layout, &CpuStorage, &Layout, &CpuStorage, &Layout) -> (CpuStorage, Shape)
    );

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
            // SAFETY: rows × d elements in each of x, y, sum and out; with
            // d ≤ NORM_MAX, the threads' registers hold a whole row.
            unsafe { launch.launch(config) }.w()?;
            CudaStorage::wrap_cuda_slice(both, dev.clone())
        });
        let mut dims = vec![2];
        dims.extend_from_slice(xl.dims());
        Ok((both, Shape::from(dims)))
    }
}

pub fn matvec(w: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    matvec_op(w, x, MatVec { gated: false })
}

pub fn matvec_gated(w: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
    if !w.dim(0)?.is_multiple_of(2) {
        return Ok(None);
    }
    matvec_op(w, x, MatVec { gated: true })
}

fn matvec_op(w: &Tensor, x: &Tensor, op: MatVec) -> Result<Option<Tensor>> {
    let (n, k) = w.dims2()?;
    let bytes = k * w.dtype().size_in_bytes();
    let aligned =
        |t: &Tensor| (t.layout().start_offset() * t.dtype().size_in_bytes()).is_multiple_of(16);
    let fits = x.elem_count() == k && x.dtype() == w.dtype() && bytes.is_multiple_of(16);
    if !fits || !w.is_contiguous() || !x.is_contiguous() || !aligned(w) || !aligned(x) {
        return Ok(None);
    }
    let mut dims = x.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = if op.gated { n / 2 } else { n };
    }
    w.apply_op2_no_bwd(x, &op)?.reshape(dims).map(Some)
}

/// `w · x`, or with `gated` `silu(gate) * up` of w's halves (gate over up).
struct MatVec {
    gated: bool,
}

impl CustomOp2 for MatVec {
    cuda_only!(
        "matvec",
        (&CpuStorage, &Layout, &CpuStorage, &Layout) -> (CpuStorage, Shape)
    );

    /// y, (n) or (n / 2) gated, for w (n, k) and x (k elements), both
    /// contiguous and 16-byte aligned (checked by the caller).
    fn cuda_fwd(
        &self,
        w: &CudaStorage,
        wl: &Layout,
        x: &CudaStorage,
        xl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (n, k) = wl.shape().dims2()?;
        let rows = if self.gated { n / 2 } else { n };
        let dev = w.device();
        let y = by_dtype!(w.dtype(), T, suffix => {
            let w = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
            let x = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
            // SAFETY: the kernel writes every element.
            let y = unsafe { dev.alloc::<T>(rows)? };
            let func = match self.gated {
                true => kernel!(dev, "matvec_gated", suffix)?,
                false => kernel!(dev, "matvec", suffix)?,
            };
            let mut launch = func.builder();
            let (rows_i32, k_i32) = (rows as i32, k as i32);
            launch.arg(&w).arg(&x).arg(&y).arg(&rows_i32).arg(&k_i32);
            let config = LaunchConfig {
                grid_dim: (rows.div_ceil(MATVEC_ROWS) as u32, 1, 1),
                block_dim: (32 * MATVEC_ROWS as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: n rows of k elements in w, k in x, `rows` in y.
            unsafe { launch.launch(config) }.w()?;
            CudaStorage::wrap_cuda_slice(y, dev.clone())
        });
        Ok((y, Shape::from(rows)))
    }
}

/// Threads for `count` elements, a thread each, in blocks of THREADS.
fn elementwise(count: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (count.div_ceil(THREADS as usize) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A (1, heads, n, hd) layout whose last axis is contiguous: position p of
/// head h at h * head_stride + p * pos_stride.
#[derive(Clone, Copy, PartialEq)]
struct Heads {
    heads: usize,
    n: usize,
    hd: usize,
    head_stride: usize,
    pos_stride: usize,
}

fn heads_layout(l: &Layout) -> Option<Heads> {
    let (b, heads, n, hd) = l.shape().dims4().ok()?;
    let stride = l.stride();
    (b == 1 && (stride[3] == 1 || hd == 1)).then_some(Heads {
        heads,
        n,
        hd,
        head_stride: stride[1],
        pos_stride: stride[2],
    })
}

pub fn rope_in_place(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<bool> {
    let Some(Heads { n, hd, .. }) = heads_layout(x.layout()) else {
        return Ok(false);
    };
    let tables = [cos, sin]
        .iter()
        .all(|t| t.is_contiguous() && t.dims() == [n, hd / 2] && t.dtype() == x.dtype());
    if !tables || !hd.is_multiple_of(2) {
        return Ok(false);
    }
    x.inplace_op3(cos, sin, &Rope { interleaved })?;
    Ok(true)
}

struct Rope {
    interleaved: bool,
}

impl InplaceOp3 for Rope {
    cuda_only!(
        "rope-in-place",
        (&mut CpuStorage, &Layout, &CpuStorage, &Layout, &CpuStorage, &Layout) -> ()
    );

    fn cuda_fwd(
        &self,
        x: &mut CudaStorage,
        xl: &Layout,
        cos: &CudaStorage,
        cl: &Layout,
        sin: &CudaStorage,
        sl: &Layout,
    ) -> Result<()> {
        let Some(Heads {
            heads,
            n,
            hd,
            head_stride,
            pos_stride,
        }) = heads_layout(xl)
        else {
            bail!("rope-in-place: layout {xl:?}")
        };
        let dev = x.device().clone();
        by_dtype!(x.dtype(), T, suffix => {
            let mut x = x.as_cuda_slice_mut::<T>()?.slice_mut(xl.start_offset()..);
            let cos = cos.as_cuda_slice::<T>()?.slice(cl.start_offset()..);
            let sin = sin.as_cuda_slice::<T>()?.slice(sl.start_offset()..);
            let func = kernel!(dev, "rope", suffix)?;
            let mut launch = func.builder();
            let ints = [heads, n, hd, self.interleaved as usize].map(|v| v as i32);
            let strides = [head_stride, pos_stride].map(|v| v as i64);
            launch.arg(&mut x).arg(&cos).arg(&sin);
            launch.arg(&ints[0]).arg(&ints[1]).arg(&ints[2]);
            launch.arg(&strides[0]).arg(&strides[1]).arg(&ints[3]);
            // SAFETY: every pair lies within x's layout; cos and sin are
            // (n, hd / 2), checked by rope_in_place.
            unsafe { launch.launch(elementwise(heads * n * hd / 2)) }.w()?;
        });
        Ok(())
    }
}

pub fn write_kv(cache: &Tensor, k: &Tensor, v: &Tensor, at: usize) -> Result<bool> {
    let (Some(kl), Some(vl)) = (heads_layout(k.layout()), heads_layout(v.layout())) else {
        return Ok(false);
    };
    let (_, _, heads, capacity, hd) = cache.dims5()?;
    let fits = kl == vl && kl.heads == heads && kl.hd == hd && at + kl.n <= capacity;
    if !fits || !cache.is_contiguous() || k.dtype() != cache.dtype() || v.dtype() != k.dtype() {
        return Ok(false);
    }
    cache.inplace_op3(k, v, &WriteKv { at })?;
    Ok(true)
}

struct WriteKv {
    at: usize,
}

impl InplaceOp3 for WriteKv {
    cuda_only!(
        "write-kv",
        (&mut CpuStorage, &Layout, &CpuStorage, &Layout, &CpuStorage, &Layout) -> ()
    );

    /// cache: (2, 1, heads, capacity, hd), contiguous; k, v: (1, heads, n,
    /// hd) alike (checked by write_kv).
    fn cuda_fwd(
        &self,
        cache: &mut CudaStorage,
        cl: &Layout,
        k: &CudaStorage,
        kl: &Layout,
        v: &CudaStorage,
        vl: &Layout,
    ) -> Result<()> {
        let Some(Heads {
            heads,
            n,
            hd,
            head_stride,
            pos_stride,
        }) = heads_layout(kl)
        else {
            bail!("write-kv: layout {kl:?}")
        };
        let capacity = cl.dims()[3];
        let dev = cache.device().clone();
        by_dtype!(cache.dtype(), T, suffix => {
            let mut cache = cache.as_cuda_slice_mut::<T>()?.slice_mut(cl.start_offset()..);
            let k = k.as_cuda_slice::<T>()?.slice(kl.start_offset()..);
            let v = v.as_cuda_slice::<T>()?.slice(vl.start_offset()..);
            let func = kernel!(dev, "write_kv", suffix)?;
            let mut launch = func.builder();
            let ints = [heads, n, hd, capacity, self.at].map(|v| v as i32);
            let strides = [head_stride, pos_stride].map(|v| v as i64);
            launch.arg(&mut cache).arg(&k).arg(&v);
            for i in &ints {
                launch.arg(i);
            }
            launch.arg(&strides[0]).arg(&strides[1]);
            // SAFETY: positions at..at + n lie within the capacity, and the
            // sources' elements within their layouts (checked by write_kv).
            unsafe { launch.launch(elementwise(2 * heads * n * hd)) }.w()?;
        });
        Ok(())
    }
}
