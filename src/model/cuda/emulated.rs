//! `kernels.cu` compiled for the CPU with a stand-in for CUDA's threads
//! (`emulated/threads.h`) and run against plain references
//! (`emulated/kernels_test.cpp`): the kernels' arithmetic and indexing are
//! checked on every machine, where a GPU is at hand only now and then. It
//! says nothing of their speed, nor of what only a GPU does (memory
//! ordering between blocks, PTX).

use std::path::Path;
use std::process::Command;

#[test]
fn the_kernels_compute_what_their_references_do() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model/cuda/emulated");
    let out = tempfile::tempdir().unwrap();
    let exe = out.path().join("kernels_test");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if !crate::system::test_tool(&cxx, "a C++20 compiler: apt install g++") {
        return;
    }
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-ffp-contract=off", "-Wall"])
        .arg("-Wno-unknown-pragmas") // CUDA's `#pragma unroll`
        .arg(format!("-DCHUNK={}", super::CHUNK))
        .arg(format!("-DTHREADS={}", super::THREADS))
        .arg(format!("-DMATVEC_ROWS={}", super::MATVEC_ROWS))
        .arg(here.join("kernels_test.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{cxx} (a C++20 compiler) runs: {e}"));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(built.status.success(), "{}", text(&built.stderr));
    let run = Command::new(&exe).output().unwrap();
    let report = text(&run.stdout) + &text(&run.stderr);
    assert!(run.status.success(), "{report}");
    assert!(report.contains(" 0 failed"), "{report}");
}
