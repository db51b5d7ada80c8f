//! The build script of both services (each Cargo.toml names it): links the service with packed
//! relative relocations (DT_RELR) on GNU/Linux. The dynamic loader reads every relocation of a
//! position-independent executable at start-up, and packed they take a few KB instead of over a
//! megabyte of pages that then stay resident for the process's life. Needs GNU ld ≥ 2.38 to
//! link and glibc ≥ 2.36 to run (Debian 12, the image's builder and runtime); the loader refuses
//! an older glibc by name (GLIBC_ABI_DT_RELR).
fn main() {
    println!("cargo::rerun-if-changed=../build/services.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    if linux_gnu {
        println!("cargo::rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
