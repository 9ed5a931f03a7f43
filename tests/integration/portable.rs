//! The binary built here runs on older x86-64 CPUs: greve's kernels choose
//! their instructions at run time and the build assumes only x86-64-v2, so
//! a CPU without AVX-512 (Haswell: AVX2, FMA, F16C) or without AVX at all
//! (Nehalem, the x86-64-v2 baseline) gets the same reply, where a build for
//! this machine died with SIGILL. The CPUs are emulated by qemu-user, which
//! `.ci/run` installs.
#![cfg(target_arch = "x86_64")]

use crate::common;

use std::process::Command;

use common::goldens;

fn greve_on(cpu: Option<&str>, args: &[&str]) -> (String, String) {
    let bin = env!("CARGO_BIN_EXE_greve");
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("qemu-x86_64");
            c.args(["-cpu", cpu, bin]);
            c
        }
        None => Command::new(bin),
    };
    let out = cmd
        .args(args)
        .env("GREVE_CONFIG", "/nonexistent-greve-test-config/config.toml")
        .env_remove("GREVE_KERNELS")
        .output()
        .expect("qemu-x86_64 runs (apt install qemu-user)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{cpu:?}: {stderr}");
    (stdout, stderr)
}

#[test]
fn older_cpus_get_the_same_reply_with_their_own_kernels() {
    if !greve::system::test_tool("qemu-x86_64", "apt install qemu-user") {
        return;
    }
    let model = goldens().join("tiny-k-q4_k_m.gguf");
    // Long enough for the prefill tiles too.
    let prompt = "Tell me about the strike in Paris and why the trains stop, ".repeat(3);
    let ask = [
        "ask",
        "-m",
        model.to_str().unwrap(),
        "--temperature",
        "0",
        "-n",
        "5",
        &prompt,
    ];
    let (here, _) = greve_on(None, &ask);
    assert!(!here.trim().is_empty());
    for (cpu, kernels) in [
        ("Haswell", "with Avx2 instructions"),
        ("Nehalem", "with Scalar instructions"),
    ] {
        assert_eq!(greve_on(Some(cpu), &ask).0, here, "{cpu}");
        let (doctor, _) = greve_on(Some(cpu), &["doctor"]);
        assert!(doctor.contains(kernels), "{cpu}: {doctor}");
    }
}
