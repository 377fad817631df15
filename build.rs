//! Compiles the C++ MLX extension in `mlx-ext/` against the MLX headers that mlx-sys exports through
//! Cargo's `links = "mlx"` metadata (`DEP_MLX_INCLUDE`, `DEP_MLX_DEFINES`). On Linux that metadata
//! comes from the override written by `scripts/setup-mlx-linux.sh`; on macOS from mlx-sys's own build.
use std::env;
use std::path::PathBuf;

fn main() {
    let ext = PathBuf::from("mlx-ext");
    println!("cargo:rerun-if-changed=mlx-ext");
    println!("cargo:rerun-if-env-changed=DEP_MLX_INCLUDE");
    println!("cargo:rerun-if-env-changed=ZAYA_EXT_NATIVE");

    let Some(include) = env::var_os("DEP_MLX_INCLUDE") else {
        panic!(
            "DEP_MLX_INCLUDE is not set: mlx-sys did not export its include paths. On Linux run \
             `scripts/setup-mlx-linux.sh` first (it writes the .cargo/config.toml override)."
        );
    };

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&ext)
        .expect("mlx-ext/ is missing")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    sources.sort();

    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++20")
        .files(&sources)
        .include(&ext)
        .opt_level(3)
        .debug(false)
        // -Wall -Wextra on our sources (MLX's headers come in through -isystem and stay quiet)
        .warnings(true)
        .extra_warnings(true)
        // GCC 12 false positives from its own headers once inlined: `__Y` in avx512fintrin.h's
        // _mm512_undefined_* idiom, and libstdc++'s char_traits memcpy (GCC bug 105651)
        .flag_if_supported("-Wno-maybe-uninitialized")
        .flag_if_supported("-Wno-uninitialized")
        .flag_if_supported("-Wno-restrict")
        .flag_if_supported("-fno-math-errno")
        .flag_if_supported("-pthread");
    // Kernels pick AVX2/FMA code paths at run time (function multiversioning through
    // __attribute__((target))), so the default build runs on every x86_64 CPU.
    if env::var("ZAYA_EXT_NATIVE").is_ok_and(|v| v == "1") {
        b.flag_if_supported("-march=native");
    }
    for dir in env::split_paths(&include) {
        b.flag("-isystem").flag(dir.to_str().expect("non-UTF-8 include path"));
    }
    for def in env::var("DEP_MLX_DEFINES").unwrap_or_default().split_whitespace() {
        match def.split_once('=') {
            Some((n, v)) => b.define(n, v),
            None => b.define(def, None),
        };
    }
    // mlx-c's private headers need these shims on x86_64 / GCC 12 (see scripts/).
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let shim = |name: &str| root.join("scripts").join(name).to_str().unwrap().to_owned();
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("aarch64") {
        b.flag("-include").flag(shim("mlx_x86_half.h"));
    }
    b.flag("-include").flag(shim("mlx_std_format_compat.h"));
    b.compile("zaya_mlx_ext");
}
